//! Whole pickled modules (`torch.save(model)`): the state dict `model.state_dict()` would
//! give, found by walking the opaque module objects without executing anything.

use crate::model::Object;

/// Most modules walked (nesting and count), so a hostile tree costs little.
const MAX_MODULES: usize = 100_000;

/// For an opaque `nn.Module` (an object whose state has `_parameters`, `_buffers` and
/// `_modules`): its state dict by dotted name, parameters and persistent buffers of each
/// module in registration order, then its submodules'.
pub fn module_state_dict(o: &Object) -> Option<ModuleStateDict> {
    let Object::Opaque(op) = o else { return None };
    op.attr("_parameters")?;
    op.attr("_modules")?;
    let mut out = Vec::new();
    let mut versions = Vec::new();
    // Explicit stack of (prefix, module), children pushed in reverse to keep order.
    let mut stack: Vec<(String, Object)> = vec![(String::new(), o.clone())];
    let mut seen = 0usize;
    while let Some((prefix, m)) = stack.pop() {
        seen += 1;
        if seen > MAX_MODULES {
            break;
        }
        let Object::Opaque(op) = &m else { continue };
        versions.push((
            prefix.strip_suffix('.').unwrap_or(&prefix).to_string(),
            class_version(&op.class),
        ));
        if let Some(params) = op.attr("_parameters") {
            for (k, v) in dict_items(params) {
                if !matches!(v, Object::None) {
                    out.push((format!("{prefix}{k}"), detached(v)));
                }
            }
        }
        let non_persistent: Vec<String> = op
            .attr("_non_persistent_buffers_set")
            .map(|s| match s {
                Object::Set(xs) | Object::List(xs) | Object::Tuple(xs) | Object::FrozenSet(xs) => {
                    xs.iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect()
                }
                _ => Vec::new(),
            })
            .unwrap_or_default();
        if let Some(bufs) = op.attr("_buffers") {
            for (k, v) in dict_items(bufs) {
                if !matches!(v, Object::None) && !non_persistent.contains(&k) {
                    out.push((format!("{prefix}{k}"), detached(v)));
                }
            }
        }
        if let Some(mods) = op.attr("_modules") {
            let children: Vec<(String, Object)> = dict_items(mods)
                .into_iter()
                .filter(|(_, v)| !matches!(v, Object::None))
                .map(|(k, v)| (format!("{prefix}{k}."), v.clone()))
                .collect();
            stack.extend(children.into_iter().rev());
        }
    }
    Some(ModuleStateDict {
        items: out,
        versions,
    })
}

/// A module's state dict and the `_metadata` torch attaches to it.
#[derive(Debug, Clone)]
pub struct ModuleStateDict {
    /// Parameters and persistent buffers by dotted name.
    pub items: Vec<(String, Object)>,
    /// Each module's dotted prefix (`""` for the root) and its class `_version`.
    pub versions: Vec<(String, i64)>,
}

/// `_version` is a class attribute, so it is not in the pickle: torch's own modules that
/// raised it are listed here; every other module has nn.Module's 1.
fn class_version(class: &str) -> i64 {
    let short = class.rsplit('.').next().unwrap_or(class);
    if class.starts_with("torch.nn.modules.batchnorm.")
        || class.starts_with("torch.nn.modules.instancenorm.")
        || short == "SyncBatchNorm"
    {
        2
    } else {
        1
    }
}

fn dict_items(o: &Object) -> Vec<(String, &Object)> {
    let items: &[(Object, Object)] = match o {
        Object::Dict(d) => d,
        Object::OrderedDict(d) => &d.items,
        _ => return Vec::new(),
    };
    items
        .iter()
        .map(|(k, v)| (crate::model::key_text(k), v))
        .collect()
}

/// `state_dict()` holds detached tensors: plain tensors without grad.
pub(crate) fn detached(v: &Object) -> Object {
    match v {
        Object::Tensor(t) => {
            let mut t = (**t).clone();
            t.is_parameter = false;
            t.requires_grad = false;
            Object::Tensor(std::sync::Arc::new(t))
        }
        o => o.clone(),
    }
}
