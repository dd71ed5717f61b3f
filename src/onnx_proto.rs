//! Just enough of the ONNX protobuf to learn what session metadata cannot say: the input channels of the
//! first convolution fed by a graph input. Inpainting UNets exported with a symbolic `sample` channel
//! dimension (diffusers' convert script) reveal 9 vs 4 channels only through `conv_in`'s weight shape.
//! Only `model.onnx` itself is read; external weight files are not needed (dims live in the graph).

use std::collections::HashMap;

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos)?;
            self.pos += 1;
            v |= ((b & 0x7f) as u64) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    /// The next (field number, value), or None at the end (or on malformed input).
    fn next(&mut self) -> Option<(u64, Field<'a>)> {
        if self.pos >= self.buf.len() {
            return None;
        }
        let key = self.varint()?;
        let field = match key & 7 {
            0 => Field::Varint(self.varint()?),
            1 => {
                self.pos = self.pos.checked_add(8)?;
                Field::Fixed
            }
            2 => {
                let len = self.varint()? as usize;
                let end = self.pos.checked_add(len)?;
                let bytes = self.buf.get(self.pos..end)?;
                self.pos = end;
                Field::Bytes(bytes)
            }
            5 => {
                self.pos = self.pos.checked_add(4)?;
                Field::Fixed
            }
            _ => return None,
        };
        Some((key >> 3, field))
    }
}

fn string(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

struct Node {
    inputs: Vec<String>,
    outputs: Vec<String>,
    op: String,
    domain: String,
}

/// Contrib operators ONNX Runtime implements for CUDA (and TensorRT through it) but not for the CPU provider;
/// they appear in graphs fused by `onnxruntime.transformers` for GPUs.
pub const GPU_ONLY_CONTRIB_OPS: &[&str] = &[
    "GroupNorm",
    "SkipGroupNorm",
    "NhwcConv",
    "BiasSplitGelu",
    "BiasAdd",
    "BiasDropout",
    "NhwcMaxPool",
];

/// (domain, op_type) of every node in the main graph, deduplicated.
pub fn operators(model: &[u8]) -> Option<std::collections::BTreeSet<(String, String)>> {
    let (nodes, _) = parse_graph(model)?;
    Some(nodes.into_iter().map(|n| (n.domain, n.op)).collect())
}

/// Whether `model` parses as an ONNX model whose main graph has nodes (an empty, truncated or foreign file
/// does not).
pub fn is_graph(model: &[u8]) -> bool {
    parse_graph(model).is_some_and(|(nodes, _)| !nodes.is_empty())
}

/// How many nodes of the main graph have one of these op types.
pub fn count_ops(model: &[u8], ops: &[&str]) -> Option<usize> {
    let (nodes, _) = parse_graph(model)?;
    Some(
        nodes
            .iter()
            .filter(|n| ops.contains(&n.op.as_str()))
            .count(),
    )
}

/// Input channels of the first Conv reached from graph input `input` (through Cast nodes), if any.
pub fn input_conv_channels(model: &[u8], input: &str) -> Option<usize> {
    let (nodes, dims) = parse_graph(model)?;
    conv_channels(&nodes, &dims, input)
}

/// Initializer name -> dims.
type Dims = HashMap<String, Vec<i64>>;

fn parse_graph(model: &[u8]) -> Option<(Vec<Node>, Dims)> {
    let mut top = Reader::new(model);
    let graph = std::iter::from_fn(|| top.next()).find_map(|(n, f)| match (n, f) {
        (7, Field::Bytes(b)) => Some(b),
        _ => None,
    })?;
    let mut nodes = Vec::new();
    let mut dims: HashMap<String, Vec<i64>> = HashMap::new();
    let mut g = Reader::new(graph);
    while let Some((n, f)) = g.next() {
        match (n, f) {
            (1, Field::Bytes(b)) => {
                let mut node = Node {
                    inputs: Vec::new(),
                    outputs: Vec::new(),
                    op: String::new(),
                    domain: String::new(),
                };
                let mut r = Reader::new(b);
                while let Some((k, f)) = r.next() {
                    if let Field::Bytes(s) = f {
                        match k {
                            1 => node.inputs.push(string(s)),
                            2 => node.outputs.push(string(s)),
                            4 => node.op = string(s),
                            7 => node.domain = string(s),
                            _ => {}
                        }
                    }
                }
                nodes.push(node);
            }
            (5, Field::Bytes(b)) => {
                let (mut name, mut d) = (String::new(), Vec::new());
                let mut r = Reader::new(b);
                while let Some((k, f)) = r.next() {
                    match (k, f) {
                        (1, Field::Varint(v)) => d.push(v as i64),
                        (1, Field::Bytes(packed)) => {
                            let mut p = Reader::new(packed);
                            while let Some(v) = p.varint() {
                                d.push(v as i64);
                            }
                        }
                        (8, Field::Bytes(s)) => name = string(s),
                        _ => {}
                    }
                }
                dims.insert(name, d);
            }
            _ => {}
        }
    }
    Some((nodes, dims))
}

fn conv_channels(nodes: &[Node], dims: &Dims, input: &str) -> Option<usize> {
    // Breadth-first over the consumers of `input`, through Cast/Identity, to the first Conv.
    let mut frontier = vec![input.to_string()];
    for _ in 0..8 {
        let mut next = Vec::new();
        for name in &frontier {
            for node in nodes.iter().filter(|n| n.inputs.first() == Some(name)) {
                match node.op.as_str() {
                    "Conv" => {
                        if let Some(c) = node
                            .inputs
                            .get(1)
                            .and_then(|w| dims.get(w))
                            .and_then(|d| d.get(1))
                        {
                            return Some(*c as usize);
                        }
                    }
                    "Cast" | "Identity" => next.extend(node.outputs.iter().cloned()),
                    _ => {}
                }
            }
        }
        if next.is_empty() {
            break;
        }
        frontier = next;
    }
    // Exporters that keep parameter names: diffusers' `conv_in.weight`.
    dims.get("conv_in.weight")
        .and_then(|d| d.get(1))
        .map(|&c| c as usize)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_conv_in_channels_from_the_bundled_unets() {
        for dir in [
            "onnx/sd-tiny-convert",
            "onnx/sd-tiny-optimum",
            "onnx/sd-tiny-fp16",
        ] {
            let bytes = std::fs::read(format!("{dir}/unet/model.onnx")).unwrap();
            assert_eq!(
                super::input_conv_channels(&bytes, "sample"),
                Some(4),
                "{dir}"
            );
        }
        assert_eq!(
            super::input_conv_channels(b"\\x01\\x02garbage", "sample"),
            None
        );
    }
}

#[cfg(test)]
mod op_tests {
    #[test]
    fn lists_operators_with_their_domains() {
        let ops = super::operators(&std::fs::read("onnx/sd-tiny-optimum/unet/model.onnx").unwrap())
            .unwrap();
        assert!(ops.iter().any(|(d, o)| d.is_empty() && o == "Conv"));
        assert!(
            !ops.iter()
                .any(|(_, o)| super::GPU_ONLY_CONTRIB_OPS.contains(&o.as_str()))
        );
    }
}
