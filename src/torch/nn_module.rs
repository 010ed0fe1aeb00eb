//! Whole pickled modules (`torch.save(model)`): the state dict `model.state_dict()` would
//! give, found by walking the opaque module objects without executing anything.
//!
//! The walk is bounded however the file shares its objects: at most [`MAX_MODULES`] modules,
//! [`MAX_ENTRIES`] dict entries looked at and [`MAX_ITEMS`] items, key paths of at most about
//! [`crate::torch::model::MAX_PATH`] bytes made of segments of at most
//! [`crate::torch::model::MAX_NAME_TEXT`] characters each.

use std::collections::{HashMap, HashSet};

use crate::torch::model::{name_text, Object, MAX_PATH};

/// Most modules walked (nesting and count), so a hostile tree costs little.
const MAX_MODULES: usize = 100_000;
/// Most entries of `_parameters`, `_buffers` and `_modules` dicts looked at in all (a module
/// object shared many times is walked each time, as torch does).
const MAX_ENTRIES: usize = 10_000_000;
/// Most items of the state dict.
const MAX_ITEMS: usize = 500_000;

/// `prefix` followed by `seg`, unless that would make the path longer than [`MAX_PATH`]:
/// then the path ends in `...` and stops growing (`cut` says it already did).
pub(crate) fn join_path(prefix: &str, cut: bool, seg: &str) -> (String, bool) {
    if cut {
        (prefix.to_string(), true)
    } else if prefix.len() + seg.len() > MAX_PATH {
        (format!("{prefix}..."), true)
    } else {
        (format!("{prefix}{seg}"), false)
    }
}

/// For an opaque `nn.Module` (an object whose state has `_parameters`, `_buffers` and
/// `_modules`): its state dict by dotted name, parameters and persistent buffers of each
/// module in registration order, then its submodules'.
pub fn module_state_dict(o: &Object) -> Option<ModuleStateDict> {
    let Object::Opaque(op) = o else { return None };
    op.attr("_parameters")?;
    op.attr("_modules")?;
    let mut out = Vec::new();
    let mut versions = Vec::new();
    let mut entries = 0usize;
    let mut truncated = false;
    let mut det = Detacher::default();
    // Explicit stack of (prefix, prefix cut, module), children pushed in reverse to keep order.
    let mut stack: Vec<(String, bool, Object)> = vec![(String::new(), false, o.clone())];
    let mut seen = 0usize;
    'walk: while let Some((prefix, cut, m)) = stack.pop() {
        seen += 1;
        if seen > MAX_MODULES {
            truncated = true;
            break;
        }
        let Object::Opaque(op) = &m else { continue };
        // Finding its attributes reads the module's state dict.
        entries = entries.saturating_add(state_len(&m));
        if entries > MAX_ENTRIES {
            truncated = true;
            break;
        }
        versions.push((
            prefix.strip_suffix('.').unwrap_or(&prefix).to_string(),
            class_version(&op.class),
        ));
        if let Some(params) = op.attr("_parameters") {
            for (k, v) in dict_items(params) {
                entries += 1;
                if entries > MAX_ENTRIES || out.len() >= MAX_ITEMS {
                    truncated = true;
                    break 'walk;
                }
                if !matches!(v, Object::None) {
                    out.push((join_path(&prefix, cut, &name_text(k)).0, det.get(v)));
                }
            }
        }
        // Compared with the buffer names as written (not cut for display).
        let non_persistent: HashSet<&str> = match op.attr("_non_persistent_buffers_set") {
            Some(
                Object::Set(xs) | Object::List(xs) | Object::Tuple(xs) | Object::FrozenSet(xs),
            ) => {
                entries = entries.saturating_add(xs.len());
                xs.iter().filter_map(|x| x.as_str()).collect()
            }
            _ => HashSet::new(),
        };
        if let Some(bufs) = op.attr("_buffers") {
            for (k, v) in dict_items(bufs) {
                entries += 1;
                if entries > MAX_ENTRIES || out.len() >= MAX_ITEMS {
                    truncated = true;
                    break 'walk;
                }
                if matches!(v, Object::None) {
                    continue;
                }
                let persistent = match k.as_str() {
                    Some(s) => !non_persistent.contains(s),
                    None => !non_persistent.contains(name_text(k).as_str()),
                };
                if persistent {
                    out.push((join_path(&prefix, cut, &name_text(k)).0, det.get(v)));
                }
            }
        }
        if let Some(mods) = op.attr("_modules") {
            let mut children: Vec<(String, bool, Object)> = Vec::new();
            for (k, v) in dict_items(mods) {
                entries += 1;
                if entries > MAX_ENTRIES || stack.len() + children.len() >= MAX_MODULES {
                    truncated = true;
                    break;
                }
                if !matches!(v, Object::None) {
                    let (p, c) = join_path(&prefix, cut, &format!("{}.", name_text(k)));
                    children.push((p, c, v.clone()));
                }
            }
            stack.extend(children.into_iter().rev());
        }
    }
    Some(ModuleStateDict {
        items: out,
        versions,
        truncated,
    })
}

/// A module's state dict and the `_metadata` torch attaches to it.
#[derive(Debug, Clone)]
pub struct ModuleStateDict {
    /// Parameters and persistent buffers by dotted name.
    pub items: Vec<(String, Object)>,
    /// Each module's dotted prefix (`""` for the root) and its class `_version`.
    pub versions: Vec<(String, i64)>,
    /// Whether the walk stopped at one of its bounds (a hostile or enormous module tree).
    pub truncated: bool,
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

/// The number of entries of an opaque object's state dict.
fn state_len(o: &Object) -> usize {
    let Object::Opaque(op) = o else { return 0 };
    match &op.state {
        Some(Object::Tuple(t)) if t.len() == 2 => dict_items(&t[0]).len(),
        Some(s) => dict_items(s).len(),
        None => 0,
    }
}

/// The entries of a dict (none for anything else).
fn dict_items(o: &Object) -> &[(Object, Object)] {
    match o {
        Object::Dict(d) => d,
        Object::OrderedDict(d) => &d.items,
        _ => &[],
    }
}

/// `state_dict()` holds detached tensors: plain tensors without grad.
pub(crate) fn detached(v: &Object) -> Object {
    match v {
        Object::Tensor(t) if t.is_parameter || t.requires_grad => {
            let mut t = (**t).clone();
            t.is_parameter = false;
            t.requires_grad = false;
            Object::Tensor(std::sync::Arc::new(t))
        }
        o => o.clone(),
    }
}

/// [`detached`], once per tensor object: a tensor the file shares between many modules (or
/// one module shared many times) is copied once.
#[derive(Default)]
pub(crate) struct Detacher(HashMap<usize, Object>);

impl Detacher {
    pub(crate) fn get(&mut self, v: &Object) -> Object {
        match v {
            Object::Tensor(t) => self
                .0
                .entry(std::sync::Arc::as_ptr(t) as usize)
                .or_insert_with(|| detached(v))
                .clone(),
            o => o.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stop_growing() {
        let (p, cut) = join_path("", false, "a.");
        assert_eq!((p.as_str(), cut), ("a.", false));
        let long = "x".repeat(MAX_PATH);
        let (p, cut) = join_path("a.", false, &long);
        assert_eq!((p.as_str(), cut), ("a....", true));
        let (p2, cut2) = join_path(&p, cut, "weight");
        assert_eq!((p2.as_str(), cut2), ("a....", true));
    }
}
