//! Exported scaled-dot-product attention rewritten as ONNX Runtime's `com.microsoft.MultiHeadAttention`.
//!
//! PyTorch exports diffusers' default attention (`AttnProcessor2_0`, `F.scaled_dot_product_attention`) as
//! plain operators, so ONNX Runtime materialises every score matrix: at 512x512 a UNet self-attention holds
//! batch x heads x 4096 x 4096 floats (1 GiB for SD 1.5's CFG batch), twice (scores and softmax). Its CPU
//! `MultiHeadAttention` kernel computes the same thing in tiles (FlashAttention-2, onnxruntime PR #20805),
//! never holding a whole score matrix. ONNX Runtime's own fusion (`onnxruntime.transformers`' UNet optimiser)
//! only recognises the older `AttnProcessor` pattern and runs in Python, so this pass is ours: it matches what
//! `torch.onnx.export` writes for SDPA without a mask, which is what optimum and diffusers' convert script
//! produce from every SD 1.x/2.x/XL UNet and VAE (checked on the fixtures: `tests/attention_fusion.rs`).
//!
//! The pattern, per attention (`H` heads, `d` = head size; names as the exporter writes them):
//!
//! ```text
//! Q[B,S,H*d] -> Reshape[B,-1,H,d] -> Transpose(0,2,1,3) -> Mul(c) --\
//! K[B,L,H*d] -> Reshape[B,-1,H,d] -> Transpose(0,2,3,1) -> Mul(c) ---MatMul -> Softmax(-1) -\
//! V[B,L,H*d] -> Reshape[B,-1,H,d] -> Transpose(0,2,1,3) -----------------------------------MatMul
//!   -> Transpose(0,2,1,3) -> Reshape[B,-1,H*d] = O
//! ```
//!
//! where `c` is `sqrt(1/sqrt(d))` computed from the shape (SDPA's default scale, split over both sides) or a
//! constant `sqrt(scale)`. It becomes `O = MultiHeadAttention(Q, K, V; num_heads = H[, scale])`; the nodes
//! only it used are removed. Anything else (a mask added to the scores, a causal text encoder, a shape we
//! cannot read) is left as it is: the pass changes how attention is computed, never what.

use super::Model;
use super::pb;
use std::collections::{HashMap, HashSet};

/// Part of the optimised-graph cache key of every graph this pass runs on: change it when the rewrite changes.
pub const PASS_VERSION: &str = "mha-1";

/// The domain of ONNX Runtime's contrib operators.
const MS_DOMAIN: &str = "com.microsoft";

/// What the pass did to one graph.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Fused {
    /// Attention blocks rewritten.
    pub attentions: usize,
    /// Nodes removed (the matched ones and the shape arithmetic only they used).
    pub removed_nodes: usize,
}

/// Rewrite every matching attention in `model`'s main graph (see the module docs). Returns what it did; a
/// graph without a match is left byte-for-byte as it was.
pub fn fuse_attention(model: &mut Model) -> Fused {
    let opset = default_opset(model);
    let graph = model.graph_mut();
    let index = Index::new(graph);
    let mut matches = Vec::new();
    let mut claimed: HashSet<usize> = HashSet::new();
    for (i, node) in graph.node.iter().enumerate() {
        if op(node) != "Softmax" {
            continue;
        }
        if let Some(m) = index.match_at(graph, i, opset)
            && m.nodes.iter().all(|n| !claimed.contains(n))
        {
            claimed.extend(m.nodes.iter().copied());
            matches.push(m);
        }
    }
    if matches.is_empty() {
        return Fused::default();
    }
    let attentions = matches.len();
    // The fused node takes the place of the last node of its match (the output Reshape): its inputs are
    // produced earlier and its output consumed later, so the list stays topologically sorted.
    let mut replacement: HashMap<usize, pb::NodeProto> = HashMap::new();
    let mut drop: HashSet<usize> = HashSet::new();
    for m in matches {
        drop.extend(m.nodes.iter().copied());
        drop.remove(&m.output_node);
        replacement.insert(m.output_node, m.fused);
    }
    let before = graph.node.len();
    let original = graph.node.clone();
    let nodes = std::mem::take(&mut graph.node);
    graph.node = nodes
        .into_iter()
        .enumerate()
        .filter(|(i, _)| !drop.contains(i))
        .map(|(i, n)| replacement.remove(&i).unwrap_or(n))
        .collect();
    remove_dead_nodes(graph);
    if !well_formed(graph) {
        // Something outside the match read one of its tensors after all: keep the export as it was.
        graph.node = original;
        return Fused::default();
    }
    let removed_nodes = before - graph.node.len();
    if !model
        .proto
        .opset_import
        .iter()
        .any(|o| o.domain.as_deref() == Some(MS_DOMAIN))
    {
        model.proto.opset_import.push(pb::OperatorSetIdProto {
            domain: Some(MS_DOMAIN.into()),
            version: Some(1),
        });
    }
    Fused {
        attentions,
        removed_nodes,
    }
}

/// The default-domain opset the model imports (0 when it says none).
fn default_opset(model: &Model) -> i64 {
    model
        .proto
        .opset_import
        .iter()
        .find(|o| o.domain.as_deref().unwrap_or("").is_empty())
        .and_then(|o| o.version)
        .unwrap_or(0)
}

fn op(node: &pb::NodeProto) -> &str {
    node.op_type.as_deref().unwrap_or("")
}

fn is_default_domain(node: &pb::NodeProto) -> bool {
    node.domain.as_deref().unwrap_or("").is_empty()
}

fn attr<'a>(node: &'a pb::NodeProto, name: &str) -> Option<&'a pb::AttributeProto> {
    node.attribute
        .iter()
        .find(|a| a.name.as_deref() == Some(name))
}

/// The factor one side of `Q K^T` is multiplied by.
#[derive(PartialEq)]
enum Scale {
    /// `sqrt(1 / sqrt(d))` computed from the shape, and the tensor its outer `Sqrt` takes.
    Default(String),
    /// A constant; the value is the square (the factor both sides apply together).
    Constant(f32),
}

/// One matched attention: the node indices it covers, the one its fused node replaces, and the fused node.
struct Match {
    nodes: Vec<usize>,
    output_node: usize,
    fused: pb::NodeProto,
}

/// Who produces and who consumes each tensor, and the graph's constants.
struct Index<'g> {
    producer: HashMap<&'g str, usize>,
    consumers: HashMap<&'g str, Vec<usize>>,
    graph_outputs: HashSet<&'g str>,
    initializers: HashMap<&'g str, &'g pb::TensorProto>,
}

impl<'g> Index<'g> {
    fn new(graph: &'g pb::GraphProto) -> Self {
        let mut producer = HashMap::new();
        let mut consumers: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, n) in graph.node.iter().enumerate() {
            for o in &n.output {
                producer.insert(o.as_str(), i);
            }
            for x in &n.input {
                consumers.entry(x.as_str()).or_default().push(i);
            }
        }
        Index {
            producer,
            consumers,
            graph_outputs: graph
                .output
                .iter()
                .filter_map(|o| o.name.as_deref())
                .collect(),
            initializers: graph
                .initializer
                .iter()
                .filter_map(|t| Some((t.name.as_deref()?, t)))
                .collect(),
        }
    }

    /// The node producing `tensor`, if it is `op_type` in the default domain.
    fn producer_of<'n>(
        &self,
        graph: &'n pb::GraphProto,
        tensor: &str,
        op_type: &str,
    ) -> Option<(usize, &'n pb::NodeProto)> {
        let i = *self.producer.get(tensor)?;
        let n = graph.node.get(i)?;
        (op(n) == op_type && is_default_domain(n)).then_some((i, n))
    }

    /// Whether `tensor` is used by exactly one node and is not a graph output: safe to fold away.
    fn private(&self, tensor: &str) -> bool {
        self.consumers.get(tensor).is_some_and(|c| c.len() == 1)
            && !self.graph_outputs.contains(tensor)
    }

    /// [`Self::private`], except that `Shape` nodes may read it too (the exporter computes SDPA's default
    /// scale from the query's shape; that arithmetic dies with the match).
    fn private_but_shapes(&self, graph: &pb::GraphProto, tensor: &str) -> bool {
        let Some(c) = self.consumers.get(tensor) else {
            return false;
        };
        let others = c
            .iter()
            .filter(|&&i| graph.node.get(i).is_some_and(|n| op(n) == "Shape"))
            .count();
        c.len() == others + 1 && !self.graph_outputs.contains(tensor)
    }

    /// The only consumer of `tensor`, if it is `op_type`.
    fn sole_consumer<'n>(
        &self,
        graph: &'n pb::GraphProto,
        tensor: &str,
        op_type: &str,
    ) -> Option<(usize, &'n pb::NodeProto)> {
        if !self.private(tensor) {
            return None;
        }
        let i = *self.consumers.get(tensor)?.first()?;
        let n = graph.node.get(i)?;
        (op(n) == op_type && is_default_domain(n)).then_some((i, n))
    }

    /// The values of a constant integer tensor (an initializer or a `Constant` node's `value`).
    fn ints(&self, graph: &pb::GraphProto, tensor: &str) -> Option<Vec<i64>> {
        tensor_ints(self.constant(graph, tensor)?)
    }

    /// The value of a constant float scalar (or one-element tensor), and whether it is float16.
    fn float(&self, graph: &pb::GraphProto, tensor: &str) -> Option<(f32, bool)> {
        use pb::tensor_proto::DataType;
        let t = self.constant(graph, tensor)?;
        let raw = t.raw_data.as_deref().filter(|r| !r.is_empty());
        match t.data_type {
            Some(dt) if dt == DataType::Float as i32 => match (t.float_data.as_slice(), raw) {
                ([v], _) => Some((*v, false)),
                (_, Some(&[a, b, c, d])) => Some((f32::from_le_bytes([a, b, c, d]), false)),
                _ => None,
            },
            // float16 keeps its bits in int32_data when not raw (onnx.proto).
            Some(dt) if dt == DataType::Float16 as i32 => match (t.int32_data.as_slice(), raw) {
                ([bits], _) => Some((half::f16::from_bits(*bits as u16).to_f32(), true)),
                (_, Some(&[a, b])) => Some((half::f16::from_le_bytes([a, b]).to_f32(), true)),
                _ => None,
            },
            _ => None,
        }
    }

    fn constant<'n>(
        &'n self,
        graph: &'n pb::GraphProto,
        tensor: &str,
    ) -> Option<&'n pb::TensorProto> {
        if let Some(t) = self.initializers.get(tensor) {
            return Some(t);
        }
        let (_, n) = self.producer_of(graph, tensor, "Constant")?;
        attr(n, "value")?.t.as_ref()
    }

    /// The heads of `Reshape(x, shape)` to `[B, -1, H, d]`: `shape` a constant of 4 values, or a `Concat` of
    /// four parts whose third is a constant.
    fn heads(&self, graph: &pb::GraphProto, shape: &str) -> Option<i64> {
        if let Some(v) = self.ints(graph, shape) {
            return (v.len() == 4 && v[2] > 0).then_some(v[2]);
        }
        let (_, concat) = self.producer_of(graph, shape, "Concat")?;
        if concat.input.len() != 4 {
            return None;
        }
        match self.ints(graph, &concat.input[2])?.as_slice() {
            [h] if *h > 0 => Some(*h),
            _ => None,
        }
    }

    /// Whether `shape` (the output Reshape's) has three parts: back to `[B, S, H*d]`.
    fn three_parts(&self, graph: &pb::GraphProto, shape: &str) -> bool {
        if let Some(v) = self.ints(graph, shape) {
            return v.len() == 3;
        }
        self.producer_of(graph, shape, "Concat")
            .is_some_and(|(_, c)| c.input.len() == 3)
    }

    /// `Transpose(Reshape(x, [B,-1,H,d]), perm)`: (x, H, the two node indices).
    fn split_heads(
        &self,
        graph: &pb::GraphProto,
        tensor: &str,
        perm: &[i64],
    ) -> Option<(String, i64, [usize; 2])> {
        let (ti, t) = self.producer_of(graph, tensor, "Transpose")?;
        if attr(t, "perm")?.ints != perm || !self.private_but_shapes(graph, tensor) {
            return None;
        }
        let (ri, r) = self.producer_of(graph, t.input.first()?, "Reshape")?;
        if !self.private(&r.output[0]) || r.input.len() != 2 {
            return None;
        }
        let h = self.heads(graph, &r.input[1])?;
        Some((r.input[0].clone(), h, [ti, ri]))
    }

    /// The scale a `Mul` operand `c` applies to one side: SDPA's default (`c` computed as
    /// `sqrt(1 / sqrt(_))`, casts allowed between; with what the outer `Sqrt` takes, for comparing both
    /// sides), or a constant (`c^2` for both sides together). `None`: neither.
    fn side_scale(&self, graph: &pb::GraphProto, c: &str) -> Option<Scale> {
        // Float16 attention is left alone: the CPU kernel computes it in float16 with its own rounding
        // (final latents off by 4e-2 on the fp16 fixture, against 3e-5 for float32).
        if let Some((v, f16)) = self.float(graph, c) {
            return (!f16).then_some(Scale::Constant(v * v));
        }
        let (_, sqrt) = self.producer_of(graph, c, "Sqrt")?;
        let (_, div) =
            self.producer_of(graph, self.skip_casts(graph, sqrt.input.first()?), "Div")?;
        let (one, f16) = self.float(graph, div.input.first()?)?;
        self.producer_of(graph, self.skip_casts(graph, div.input.get(1)?), "Sqrt")?;
        (one == 1.0 && !f16).then(|| Scale::Default(sqrt.input[0].clone()))
    }

    fn skip_casts<'n>(&'n self, graph: &'n pb::GraphProto, mut tensor: &'n str) -> &'n str {
        while let Some((_, cast)) = self.producer_of(graph, tensor, "Cast") {
            match cast.input.first() {
                Some(x) => tensor = x,
                None => break,
            }
        }
        tensor
    }

    /// `Mul(x, c)` or `Mul(c, x)` where `x` comes from a `Transpose`: (x, c, the Mul's index).
    fn scaled<'n>(
        &self,
        graph: &'n pb::GraphProto,
        tensor: &str,
    ) -> Option<(&'n str, &'n str, usize)> {
        let (mi, mul) = self.producer_of(graph, tensor, "Mul")?;
        if !self.private(tensor) || mul.input.len() != 2 {
            return None;
        }
        let from_transpose = |x: &str| self.producer_of(graph, x, "Transpose").is_some();
        let (a, b) = (mul.input[0].as_str(), mul.input[1].as_str());
        if from_transpose(a) {
            Some((a, b, mi))
        } else if from_transpose(b) {
            Some((b, a, mi))
        } else {
            None
        }
    }

    /// The attention around the Softmax at `i`, if it is the module docs' pattern.
    fn match_at(&self, graph: &pb::GraphProto, i: usize, opset: i64) -> Option<Match> {
        let softmax = graph.node.get(i)?;
        if !is_default_domain(softmax) {
            return None;
        }
        // Softmax's default axis is -1 from opset 13 on (1 before).
        let axis = attr(softmax, "axis").and_then(|a| a.i);
        if !(axis == Some(-1) || axis.is_none() && opset >= 13) {
            return None;
        }
        let scores = softmax.input.first()?;
        let (qk_i, qk) = self.producer_of(graph, scores, "MatMul")?;
        if !self.private(scores) || qk.input.len() != 2 {
            return None;
        }
        let (q_heads, q_scale, q_mul) = self.scaled(graph, &qk.input[0])?;
        let (k_heads, k_scale, k_mul) = self.scaled(graph, &qk.input[1])?;
        let scale = match (
            self.side_scale(graph, q_scale)?,
            self.side_scale(graph, k_scale)?,
        ) {
            (Scale::Default(a), Scale::Default(b)) if a == b => None,
            (Scale::Constant(a), Scale::Constant(b)) if a == b => Some(a),
            _ => return None,
        };
        let (q, hq, q_nodes) = self.split_heads(graph, q_heads, &[0, 2, 1, 3])?;
        let (k, hk, k_nodes) = self.split_heads(graph, k_heads, &[0, 2, 3, 1])?;
        let (pv_i, pv) = self.sole_consumer(graph, &softmax.output[0], "MatMul")?;
        if pv.input.first() != softmax.output.first() || pv.input.len() != 2 {
            return None;
        }
        let (v, hv, v_nodes) = self.split_heads(graph, &pv.input[1], &[0, 2, 1, 3])?;
        if hq != hk || hk != hv {
            return None;
        }
        let (merge_i, merge) = self.sole_consumer(graph, &pv.output[0], "Transpose")?;
        if attr(merge, "perm")?.ints != [0, 2, 1, 3] {
            return None;
        }
        let (out_i, out) = self.sole_consumer(graph, &merge.output[0], "Reshape")?;
        if out.input.len() != 2 || !self.three_parts(graph, &out.input[1]) {
            return None;
        }
        let name = softmax
            .name
            .as_deref()
            .map(|n| n.trim_end_matches("/Softmax").to_string() + "/MultiHeadAttention");
        let mut attribute = vec![pb::AttributeProto {
            name: Some("num_heads".into()),
            r#type: Some(pb::attribute_proto::AttributeType::Int as i32),
            i: Some(hq),
            ..Default::default()
        }];
        if let Some(s) = scale {
            attribute.push(pb::AttributeProto {
                name: Some("scale".into()),
                r#type: Some(pb::attribute_proto::AttributeType::Float as i32),
                f: Some(s),
                ..Default::default()
            });
        }
        let fused = pb::NodeProto {
            input: vec![q, k, v],
            output: vec![out.output.first()?.clone()],
            name,
            op_type: Some("MultiHeadAttention".into()),
            domain: Some(MS_DOMAIN.into()),
            attribute,
            ..Default::default()
        };
        let mut nodes = vec![i, qk_i, q_mul, k_mul, pv_i, merge_i, out_i];
        nodes.extend(q_nodes);
        nodes.extend(k_nodes);
        nodes.extend(v_nodes);
        Some(Match {
            nodes,
            output_node: out_i,
            fused,
        })
    }
}

/// The integer values of a constant tensor (int64 or int32; raw or typed storage).
fn tensor_ints(t: &pb::TensorProto) -> Option<Vec<i64>> {
    use pb::tensor_proto::DataType;
    let dt = t.data_type?;
    if dt == DataType::Int64 as i32 {
        if let Some(raw) = t.raw_data.as_deref().filter(|r| !r.is_empty()) {
            return (raw.len() % 8 == 0).then(|| {
                raw.chunks_exact(8)
                    .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                    .collect()
            });
        }
        return Some(t.int64_data.clone());
    }
    if dt == DataType::Int32 as i32 {
        if let Some(raw) = t.raw_data.as_deref().filter(|r| !r.is_empty()) {
            return (raw.len() % 4 == 0).then(|| {
                raw.chunks_exact(4)
                    .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                    .collect()
            });
        }
        return Some(t.int32_data.iter().map(|&v| v as i64).collect());
    }
    None
}

/// Whether every node input is produced before it is read: by an earlier node, an initializer or a graph input.
fn well_formed(graph: &pb::GraphProto) -> bool {
    let mut known: HashSet<&str> = graph
        .initializer
        .iter()
        .filter_map(|t| t.name.as_deref())
        .chain(graph.input.iter().filter_map(|i| i.name.as_deref()))
        .collect();
    for n in &graph.node {
        if !n
            .input
            .iter()
            .all(|x| x.is_empty() || known.contains(x.as_str()))
        {
            return false;
        }
        known.extend(n.output.iter().map(String::as_str));
    }
    true
}

/// Remove nodes none of whose outputs is used (by a node or as a graph output), until none is left: the
/// shape arithmetic that only the fused nodes' Reshapes used.
fn remove_dead_nodes(graph: &mut pb::GraphProto) {
    let outputs: HashSet<String> = graph.output.iter().filter_map(|o| o.name.clone()).collect();
    loop {
        let used: HashSet<&str> = graph
            .node
            .iter()
            .flat_map(|n| n.input.iter().map(String::as_str))
            .chain(outputs.iter().map(String::as_str))
            .collect();
        let dead: Vec<usize> = graph
            .node
            .iter()
            .enumerate()
            .filter(|(_, n)| {
                !n.output.is_empty()
                    && n.output
                        .iter()
                        .all(|o| o.is_empty() || !used.contains(o.as_str()))
            })
            .map(|(i, _)| i)
            .collect();
        if dead.is_empty() {
            return;
        }
        let dead: HashSet<usize> = dead.into_iter().collect();
        let nodes = std::mem::take(&mut graph.node);
        graph.node = nodes
            .into_iter()
            .enumerate()
            .filter(|(i, _)| !dead.contains(i))
            .map(|(_, n)| n)
            .collect();
    }
}
