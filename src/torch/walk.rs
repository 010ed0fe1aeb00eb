//! Walks of the object tree: every tensor and every leaf with its dotted key path, whole
//! pickled modules entered through their state dict.

use std::collections::HashMap;
use std::sync::Arc;

use crate::error::{Error, Result};

use crate::torch::model::{key_text, Object, Tensor, MAX_PATH};
use crate::torch::nn_module::module_state_dict;

impl Object {
    /// Every tensor in the tree with its key path (`model.layer.weight`, `2`), in order.
    /// Shared subtrees are visited once per path; the walk is bounded by `max_items`.
    pub fn tensors(&self, max_items: usize) -> Vec<(String, Arc<Tensor>)> {
        self.leaves(max_items)
            .into_iter()
            .filter_map(|(p, o)| match o {
                Object::Tensor(t) => Some((p, t.clone())),
                _ => None,
            })
            .collect()
    }

    /// Every leaf of the tree (anything but a container or module) with its key path, in
    /// order; bounded by `max_items` visited nodes.
    pub fn leaves(&self, max_items: usize) -> Vec<(String, Object)> {
        self.leaves_bounded(max_items).0
    }

    /// [`Object::leaves`], and whether the walk stopped before the end of the tree.
    pub fn leaves_bounded(&self, max_items: usize) -> (Vec<(String, Object)>, bool) {
        let mut truncated = false;
        let mut out = Vec::new();
        let mut stack: Vec<(String, Object)> = vec![(String::new(), self.clone())];
        let mut visited = 0usize;
        while let Some((path, o)) = stack.pop() {
            visited += 1;
            if visited > max_items {
                truncated = true;
                break;
            }
            let join = |k: &str| {
                if path.is_empty() {
                    k.to_string()
                } else if path.len() > MAX_PATH {
                    // Deep trees of long keys: the path stops growing (it already ends in "...").
                    path.clone()
                } else if path.len() + k.len() > MAX_PATH {
                    format!("{path}....")
                } else {
                    format!("{path}.{k}")
                }
            };
            // Never hold more pending entries than can still be visited.
            let room = max_items.saturating_sub(visited + stack.len());
            let mut children: Vec<(String, Object)> = Vec::new();
            match &o {
                Object::Tensor(_) => out.push((path.clone(), o.clone())),
                Object::Dict(d) => {
                    for (k, v) in d.iter().take(room) {
                        children.push((join(&key_text(k)), v.clone()));
                    }
                }
                Object::OrderedDict(d) => {
                    for (k, v) in d.items.iter().take(room) {
                        children.push((join(&key_text(k)), v.clone()));
                    }
                }
                Object::Tuple(xs) | Object::List(xs) => {
                    for (i, v) in xs.iter().enumerate().take(room) {
                        children.push((join(&i.to_string()), v.clone()));
                    }
                }
                Object::ScriptModule(m) => {
                    for (k, v) in m.state_dict.iter().take(room) {
                        children.push((join(k), v.clone()));
                    }
                }
                Object::Opaque(op) => {
                    if let Some(sd) = module_state_dict(&o) {
                        truncated |= sd.truncated;
                        // An nn.Module: its state dict is what a user means by its contents.
                        for (k, v) in sd.items.into_iter().take(room) {
                            children.push((join(&k), v));
                        }
                    } else if let Some(s) = &op.state {
                        children.push((path.clone(), s.clone()));
                    }
                }
                _ => out.push((path.clone(), o.clone())),
            }
            if children.len() == room && room < usize::MAX {
                // (a container with more children than there was room for is cut)
                truncated |= matches!(
                    &o,
                    Object::Dict(_)
                        | Object::OrderedDict(_)
                        | Object::Tuple(_)
                        | Object::List(_)
                        | Object::ScriptModule(_)
                        | Object::Opaque(_)
                );
            }
            stack.extend(children.into_iter().rev());
        }
        (out, truncated)
    }
}

/// The tensors of an object tree by name, built once per checkpoint on first use.
#[derive(Debug, Default)]
pub(crate) struct TensorIndex {
    pub(crate) list: Vec<(Arc<str>, Arc<Tensor>)>,
    by_name: HashMap<Arc<str>, usize>,
}

impl TensorIndex {
    pub(crate) fn build(root: &crate::torch::model::Object) -> TensorIndex {
        let mut idx = TensorIndex::default();
        for (name, t) in root.tensors(usize::MAX) {
            let name: Arc<str> = name.into();
            let i = idx.list.len();
            idx.by_name.entry(name.clone()).or_insert(i);
            idx.list.push((name, t));
        }
        idx
    }

    pub(crate) fn get(&self, name: &str) -> Result<&(Arc<str>, Arc<Tensor>)> {
        match self.by_name.get(name) {
            Some(&i) => Ok(&self.list[i]),
            None => Err(Error::NoTensor {
                name: name.to_string(),
                close: close_names(name, self.list.iter().map(|(n, _)| &**n)),
            }),
        }
    }
}

/// Up to five names close to `name`: by edit distance, then those sharing its last segment.
fn close_names<'n>(name: &str, names: impl Iterator<Item = &'n str>) -> Vec<String> {
    let limit = (name.chars().count() / 3).max(2);
    let last = name.rsplit('.').next().unwrap_or(name);
    let mut scored: Vec<(usize, &str)> = names
        .filter_map(|n| {
            let d = strsim::levenshtein(name, n);
            if d <= limit {
                Some((d, n))
            } else if n.rsplit('.').next() == Some(last) || n.ends_with(name) {
                Some((limit + 1, n))
            } else {
                None
            }
        })
        .collect();
    scored.sort();
    scored.dedup_by(|a, b| a.1 == b.1);
    scored
        .into_iter()
        .take(5)
        .map(|(_, n)| n.to_string())
        .collect()
}
