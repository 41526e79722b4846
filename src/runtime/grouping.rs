//! Grouping a model's tensors into the units decoded together.

use std::collections::HashMap;

/// Path components that are followed by a layer number in common models.
const LAYER_WORDS: [&str; 4] = ["layers", "h", "blocks", "layer"];

/// How tensors are grouped.
#[derive(Default)]
pub enum Grouping {
    /// By layer from the name: `…layers.N.…`, `…h.N.…`, `…blocks.N.…` or
    /// `…layer.N.…` form group `….N`; every other tensor is a group of its
    /// own. Layers come in numeric order.
    #[default]
    ByLayer,
    /// The caller's key: tensors with equal keys form a group, in order of
    /// first appearance.
    Custom(Box<dyn Fn(&str) -> String + Send + Sync>),
}

/// The layer group of a tensor name, `(group name, prefix, layer number)`:
/// `model.layers.3.mlp.up.weight` → `("model.layers.3", "model.layers", 3)`.
pub fn layer_group(name: &str) -> Option<(String, String, u64)> {
    let parts: Vec<&str> = name.split('.').collect();
    (0..parts.len().saturating_sub(1)).find_map(|i| {
        let number = parts[i + 1].parse::<u64>().ok()?;
        LAYER_WORDS.contains(&parts[i]).then(|| {
            let prefix = parts[..=i].join(".");
            (format!("{prefix}.{number}"), prefix, number)
        })
    })
}

impl Grouping {
    /// Groups `names` (tensor indices per group), in decode order.
    pub fn groups(&self, names: &[&str]) -> Vec<(String, Vec<usize>)> {
        let keyed: Vec<(String, Option<(String, u64)>)> = names
            .iter()
            .map(|name| match self {
                Grouping::ByLayer => match layer_group(name) {
                    Some((group, prefix, number)) => (group, Some((prefix, number))),
                    None => (name.to_string(), None),
                },
                Grouping::Custom(key) => (key(name), None),
            })
            .collect();
        let mut order: Vec<String> = Vec::new();
        let mut members: HashMap<String, Vec<usize>> = HashMap::new();
        let mut layer_of: HashMap<String, (String, u64)> = HashMap::new();
        for (index, (group, layer)) in keyed.into_iter().enumerate() {
            let entry = members.entry(group.clone()).or_insert_with(|| {
                order.push(group.clone());
                Vec::new()
            });
            entry.push(index);
            if let Some(layer) = layer {
                layer_of.insert(group, layer);
            }
        }
        // Files list tensors by name (layers.10 before layers.2): put each
        // prefix's layers back in numeric order, in the slots they occupy.
        let mut slots: HashMap<&str, Vec<usize>> = HashMap::new();
        for (slot, group) in order.iter().enumerate() {
            if let Some((prefix, _)) = layer_of.get(group) {
                slots.entry(prefix.as_str()).or_default().push(slot);
            }
        }
        let mut ordered = order.clone();
        for positions in slots.values() {
            let mut layers: Vec<&String> = positions.iter().map(|&p| &order[p]).collect();
            layers.sort_by_key(|group| layer_of[*group].1);
            for (&position, group) in positions.iter().zip(layers) {
                ordered[position] = group.clone();
            }
        }
        ordered
            .into_iter()
            .map(|group| {
                let tensors = members.remove(&group).unwrap_or_default();
                (group, tensors)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_the_common_layer_names() {
        for (name, group) in [
            ("model.layers.3.mlp.up.weight", "model.layers.3"),
            ("transformer.h.11.attn.c_attn.weight", "transformer.h.11"),
            ("blocks.0.norm.weight", "blocks.0"),
            ("encoder.layer.5.output.dense.bias", "encoder.layer.5"),
        ] {
            assert_eq!(layer_group(name).unwrap().0, group);
        }
        assert!(layer_group("embeddings.word_embeddings.weight").is_none());
        assert!(layer_group("lm_head.weight").is_none());
        assert!(layer_group("model.layers.norm.weight").is_none());
    }

    #[test]
    fn orders_layers_numerically_and_keeps_other_tensors_alone() {
        let names = [
            "embed.weight",
            "layers.0.a",
            "layers.1.a",
            "layers.10.a",
            "layers.10.b",
            "layers.2.a",
            "norm.weight",
        ];
        let groups = Grouping::ByLayer.groups(&names);
        let order: Vec<&str> = groups.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(
            order,
            [
                "embed.weight",
                "layers.0",
                "layers.1",
                "layers.2",
                "layers.10",
                "norm.weight"
            ]
        );
        assert_eq!(groups[4].1, vec![3, 4]);
    }

    #[test]
    fn custom_grouping_uses_the_callers_key() {
        let grouping = Grouping::Custom(Box::new(|name: &str| name[..1].to_string()));
        let groups = grouping.groups(&["a1", "b1", "a2"]);
        assert_eq!(
            groups,
            vec![("a".to_string(), vec![0, 2]), ("b".to_string(), vec![1])]
        );
    }
}
