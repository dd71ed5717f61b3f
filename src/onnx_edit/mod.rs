//! Reading, editing and writing ONNX models in memory: the layer that clip skip uses today and textual
//! inversion and LoRA will reuse. The messages are generated from onnx.proto by prost-build
//! (`scripts/gen_onnx_pb.sh`, committed as [`pb`], so building needs no protoc); nothing is hand-decoded.
//!
//! External data stays external: an edited model keeps its initializers' `external_data` entries (relative
//! locations), and the runtime loads the edited bytes with the component's folder as the place those
//! locations are relative to (`session.model_external_initializers_file_folder_path`). Weights stored inside
//! `model.onnx` are sliced from the one buffer the file was read into (`Bytes`), not copied, until encoding.
//!
//! [`crate::onnx_proto`], the older hand-written reader, stays for what it does without decoding the whole
//! model (one convolution's weight shape).

pub mod attention;
#[allow(missing_docs, clippy::all)]
pub mod pb;

use crate::error::{Error, Result};
use prost::Message;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// A decoded ONNX model and where it came from.
pub struct Model {
    /// The model.
    pub proto: pb::ModelProto,
    /// The file it was read from (for messages, and as the base of external data locations).
    pub path: PathBuf,
}

impl Model {
    /// Read and decode `path`.
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::decode(bytes.into(), path)
    }

    /// Decode a model already in memory; `path` names it in messages.
    pub fn decode(bytes: bytes::Bytes, path: &Path) -> Result<Self> {
        let proto = pb::ModelProto::decode(bytes)
            .map_err(|e| Error::model(path, format!("not an ONNX model: {e}")))?;
        if proto.graph.is_none() {
            return Err(Error::model(path, "is an ONNX model without a graph"));
        }
        Ok(Model {
            proto,
            path: path.to_path_buf(),
        })
    }

    /// The serialised model.
    pub fn encode(&self) -> Vec<u8> {
        self.proto.encode_to_vec()
    }

    /// The main graph.
    pub fn graph(&self) -> &pb::GraphProto {
        // `decode` refuses models without one; a `Model` built by hand without one reads as an empty graph.
        static EMPTY: std::sync::OnceLock<pb::GraphProto> = std::sync::OnceLock::new();
        self.proto
            .graph
            .as_ref()
            .unwrap_or_else(|| EMPTY.get_or_init(pb::GraphProto::default))
    }

    /// The main graph, to edit.
    pub fn graph_mut(&mut self) -> &mut pb::GraphProto {
        self.proto.graph.get_or_insert_with(Default::default)
    }

    /// The node that produces `tensor`, if a node does (not an input or initializer).
    pub fn producer(&self, tensor: &str) -> Option<&pb::NodeProto> {
        self.graph()
            .node
            .iter()
            .find(|n| n.output.iter().any(|o| o == tensor))
    }

    /// Make `tensor` (produced somewhere in the graph) a graph output called `name`, with the element type
    /// and rank of the existing output `like` (its dimensions made symbolic). An `Identity` node connects them
    /// when the names differ.
    pub fn expose(&mut self, tensor: &str, name: &str, like: &str) -> Result<()> {
        let template = self
            .graph()
            .output
            .iter()
            .find(|o| o.name.as_deref() == Some(like))
            .cloned()
            .ok_or_else(|| Error::model(&self.path, format!("has no output `{like}`")))?;
        if self
            .graph()
            .output
            .iter()
            .any(|o| o.name.as_deref() == Some(name))
        {
            return Ok(());
        }
        let path = self.path.clone();
        let g = self.graph_mut();
        if tensor != name {
            if g.node.iter().any(|n| n.output.iter().any(|o| o == name)) {
                return Err(Error::model(
                    &path,
                    format!("already has a tensor `{name}`"),
                ));
            }
            g.node.push(pb::NodeProto {
                input: vec![tensor.to_string()],
                output: vec![name.to_string()],
                name: Some(format!("sd_onnx/{name}")),
                op_type: Some("Identity".into()),
                ..Default::default()
            });
        }
        let mut out = template;
        out.name = Some(name.to_string());
        if let Some(pb::type_proto::Value::TensorType(t)) =
            out.r#type.as_mut().and_then(|t| t.value.as_mut())
            && let Some(shape) = t.shape.as_mut()
        {
            for (i, d) in shape.dim.iter_mut().enumerate() {
                d.value = Some(pb::tensor_shape_proto::dimension::Value::DimParam(format!(
                    "{name}_dim_{i}"
                )));
            }
        }
        g.output.push(out);
        Ok(())
    }

    /// Compute `output` again from `to` instead of `from`: every node on a path from `from` to `output` is
    /// copied, its outputs renamed with `suffix`, and the copy of `output` is returned. Nodes `output` needs
    /// that do not depend on `from` (weights, constants) are shared, not copied.
    pub fn replay(&mut self, from: &str, to: &str, output: &str, suffix: &str) -> Result<String> {
        let g = self.graph();
        let producers: HashMap<&str, usize> = g
            .node
            .iter()
            .enumerate()
            .flat_map(|(i, n)| n.output.iter().map(move |o| (o.as_str(), i)))
            .collect();
        // Backward from `output`: the nodes it needs.
        let mut needed: HashSet<usize> = HashSet::new();
        let mut stack = vec![output];
        while let Some(t) = stack.pop() {
            if t == from {
                continue;
            }
            if let Some(&i) = producers.get(t)
                && needed.insert(i)
            {
                stack.extend(g.node[i].input.iter().map(String::as_str));
            }
        }
        // Forward from `from`, within those: the nodes that depend on it.
        let mut tainted: HashSet<&str> = HashSet::from([from]);
        let mut copy: Vec<usize> = Vec::new();
        for (i, n) in g.node.iter().enumerate() {
            if needed.contains(&i) && n.input.iter().any(|x| tainted.contains(x.as_str())) {
                tainted.extend(n.output.iter().map(String::as_str));
                copy.push(i);
            }
        }
        if !tainted.contains(output) {
            return Err(Error::model(
                &self.path,
                format!("`{output}` does not depend on `{from}`"),
            ));
        }
        let rename = |t: &str| -> String {
            if t == from {
                to.to_string()
            } else if tainted.contains(t) {
                format!("{t}{suffix}")
            } else {
                t.to_string()
            }
        };
        let copies: Vec<pb::NodeProto> = copy
            .iter()
            .map(|&i| {
                let mut n = g.node[i].clone();
                n.input = n.input.iter().map(|t| rename(t)).collect();
                n.output = n.output.iter().map(|t| rename(t)).collect();
                n.name = n.name.map(|s| format!("{s}{suffix}"));
                n
            })
            .collect();
        let result = rename(output);
        self.graph_mut().node.extend(copies);
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(op: &str, inputs: &[&str], outputs: &[&str]) -> pb::NodeProto {
        pb::NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            name: Some(format!("/{op}")),
            op_type: Some(op.into()),
            ..Default::default()
        }
    }

    fn model() -> Model {
        let float_out = |name: &str| pb::ValueInfoProto {
            name: Some(name.into()),
            r#type: Some(pb::TypeProto {
                value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                    elem_type: Some(1),
                    shape: Some(pb::TensorShapeProto {
                        dim: vec![pb::tensor_shape_proto::Dimension {
                            value: Some(pb::tensor_shape_proto::dimension::Value::DimValue(3)),
                            ..Default::default()
                        }],
                    }),
                })),
                ..Default::default()
            }),
            ..Default::default()
        };
        let graph = pb::GraphProto {
            node: vec![
                node("Relu", &["x"], &["a"]),
                node("Relu", &["a"], &["b"]),
                node("Constant", &[], &["k"]),
                node("Mul", &["b", "k"], &["y"]),
            ],
            output: vec![float_out("y")],
            ..Default::default()
        };
        Model {
            proto: pb::ModelProto {
                graph: Some(graph),
                ..Default::default()
            },
            path: "m.onnx".into(),
        }
    }

    #[test]
    fn replay_copies_only_what_depends_on_the_start() {
        let mut m = model();
        let y2 = m.replay("b", "a", "y", ".again").unwrap();
        assert_eq!(y2, "y.again");
        let last = m.graph().node.last().unwrap();
        assert_eq!(last.input, vec!["a".to_string(), "k".to_string()]);
        assert_eq!(m.graph().node.len(), 5, "only the Mul is copied");
        m.expose(&y2, "y2", "y").unwrap();
        assert_eq!(m.graph().output.len(), 2);
        // A round trip through the wire format keeps everything.
        let again = Model::decode(m.encode().into(), Path::new("m.onnx")).unwrap();
        assert_eq!(again.proto, m.proto);
        assert!(m.replay("k", "a", "x", "_").is_err());
    }
}
