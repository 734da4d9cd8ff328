//! Deep merge of YAML nodes: the rule behind "host ← group ← all".
//!
//! Mappings merge key by key, recursively; anything else (scalars, sequences) in the overriding
//! node replaces the base. Nodes keep their own spans, so an error found after merging still
//! points at the file and line the winning value came from.
use marked_yaml::Node;
use marked_yaml::types::MarkedMappingNode;

/// `over` wins over `base`.
pub fn merge(base: Node, over: Node) -> Node {
    match (base, over) {
        (Node::Mapping(mut base), Node::Mapping(over)) => {
            let span = *over.span();
            for (k, v) in over.iter() {
                let merged = match base.remove(k) {
                    Some(old) => merge(old, v.clone()),
                    None => v.clone(),
                };
                base.insert(k.clone(), merged);
            }
            *base.span_mut() = span;
            Node::Mapping(base)
        }
        (_, over) => over,
    }
}

/// Merges a list of layers, lowest priority first.
pub fn merge_all(span: marked_yaml::Span, layers: impl IntoIterator<Item = Node>) -> Node {
    layers
        .into_iter()
        .fold(Node::Mapping(MarkedMappingNode::new_empty(span)), merge)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Node {
        marked_yaml::parse_yaml(0, s).unwrap()
    }

    #[test]
    fn mappings_merge_deeply_and_the_override_wins() {
        let base = parse("ssh: {user: root, port: 22}\ninterfaces: [a, b]\n");
        let over = parse("ssh: {port: 2222}\ninterfaces: [c]\n");
        let m = merge(base, over);
        let m = m.as_mapping().unwrap();
        let ssh = m.get_mapping("ssh").unwrap();
        assert_eq!(ssh.get_scalar("user").unwrap().as_str(), "root");
        assert_eq!(ssh.get_scalar("port").unwrap().as_str(), "2222");
        let ifs = m.get_sequence("interfaces").unwrap();
        assert_eq!(ifs.len(), 1, "sequences are replaced, not appended");
    }
}
