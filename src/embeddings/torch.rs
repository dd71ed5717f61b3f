//! Reading the tensors of a `torch.save` file (the zip format torch has written since 1.6) without Python:
//! the zip through the `zip` crate, `data.pkl` through a small pickle machine of our own.
//!
//! Why our own unpickler: the pickle crates on crates.io (serde-pickle) stop at `GLOBAL`/`REDUCE` and persistent
//! ids, which is all a torch file is made of; candle's reader comes with all of candle. This one knows the opcodes
//! `torch.save` emits (protocol 2-5) and builds only what embeddings need: dicts, lists, tuples, scalars, strings
//! and tensors (`torch._utils._rebuild_tensor_v2` / `_rebuild_parameter` over Float/Half/BFloat16 storages).
//! Any other callable becomes an opaque value; nothing is ever executed.

use std::collections::HashMap;
use std::io::Read;

/// A value of the pickle, as far as embeddings need.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `None`.
    None,
    /// A bool.
    Bool(bool),
    /// An int.
    Int(i64),
    /// A float.
    Float(f64),
    /// A str.
    Str(String),
    /// A list or tuple.
    List(Vec<Value>),
    /// A dict, in insertion order.
    Dict(Vec<(Value, Value)>),
    /// A tensor's data, as float32, with its shape.
    Tensor(Vec<usize>, Vec<f32>),
    /// Something else (a class, an object we do not build).
    Opaque(String),
    // Internal: the stack mark and references not yet resolved.
    #[doc(hidden)]
    Mark,
    #[doc(hidden)]
    Global(String),
    #[doc(hidden)]
    Storage(StorageRef),
}

#[doc(hidden)]
#[derive(Clone, Debug, PartialEq)]
pub struct StorageRef {
    dtype: String,
    key: String,
}

impl Value {
    /// The value under `key` of a dict with string keys.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(items) => items
                .iter()
                .find(|(k, _)| matches!(k, Value::Str(s) if s == key))
                .map(|(_, v)| v),
            _ => None,
        }
    }
}

/// Read `bytes` (a whole `.pt` / `.bin` file) into its top-level value.
pub fn load(bytes: &[u8]) -> Result<Value, String> {
    if !bytes.starts_with(b"PK") {
        return Err(if bytes.first() == Some(&0x80) {
            "is in torch's legacy (pre-1.6) format; load and save it again with a current torch"
                .into()
        } else {
            "is not a torch file (no zip archive)".into()
        });
    }
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| format!("is not a readable zip archive: {e}"))?;
    let pkl = zip
        .file_names()
        .filter_map(|n| n.ok().map(|n| n.into_owned()))
        .find(|n| n.ends_with("data.pkl"))
        .ok_or("has no data.pkl (not a torch.save file)")?;
    let prefix = pkl.trim_end_matches("data.pkl").to_string();
    let mut read = |name: &str| -> Result<Vec<u8>, String> {
        let mut f = zip
            .by_name(name)
            .map_err(|e| format!("has no `{name}`: {e}"))?;
        // Bounded by the file itself: entries are stored uncompressed by torch.
        let mut out = Vec::new();
        f.read_to_end(&mut out)
            .map_err(|e| format!("`{name}`: {e}"))?;
        Ok(out)
    };
    let pickle = read(&pkl)?;
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    let mut fetch = |s: &StorageRef| -> Result<Vec<u8>, String> {
        if let Some(b) = storages.get(&s.key) {
            return Ok(b.clone());
        }
        let b = read(&format!("{prefix}data/{}", s.key))?;
        storages.insert(s.key.clone(), b.clone());
        Ok(b)
    };
    Machine::default().run(&pickle, &mut fetch)
}

#[derive(Default)]
struct Machine {
    stack: Vec<Value>,
    memo: HashMap<u64, Value>,
    /// Values copied out of the memo so far: a hostile pickle can nest references to double its size every few
    /// bytes, so copies are counted and bounded.
    copied: usize,
}

/// Values (and tensor elements) the memo may hand out in copies, in all.
const MAX_COPIED: usize = 1 << 24;

/// Nodes in `v`, counting a tensor's elements; stops counting past `limit`.
fn weight(v: &Value, limit: usize) -> usize {
    match v {
        Value::List(items) => {
            let mut n = 1;
            for i in items {
                n += weight(i, limit);
                if n > limit {
                    break;
                }
            }
            n
        }
        Value::Dict(items) => {
            let mut n = 1;
            for (k, x) in items {
                n += weight(k, limit) + weight(x, limit);
                if n > limit {
                    break;
                }
            }
            n
        }
        Value::Tensor(_, d) => 1 + d.len(),
        Value::Str(s) => 1 + s.len() / 8,
        _ => 1,
    }
}

fn element_size(dtype: &str) -> Result<usize, String> {
    match dtype {
        "FloatStorage" => Ok(4),
        "HalfStorage" | "BFloat16Storage" => Ok(2),
        other => Err(format!(
            "holds a {other} tensor (embeddings are float, half or bfloat16)"
        )),
    }
}

fn decode(dtype: &str, b: &[u8]) -> Vec<f32> {
    match dtype {
        "FloatStorage" => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        "HalfStorage" => b
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        _ => b
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
    }
}

fn int(v: &Value) -> Result<usize, String> {
    match v {
        Value::Int(i) if *i >= 0 => Ok(*i as usize),
        other => Err(format!("expected a size, found {other:?}")),
    }
}

fn ints(v: &Value) -> Result<Vec<usize>, String> {
    match v {
        Value::List(items) => items.iter().map(int).collect(),
        other => Err(format!("expected a shape, found {other:?}")),
    }
}

/// `_rebuild_tensor_v2(storage, offset, size, stride, ...)`: a contiguous float32 copy.
fn rebuild_tensor(
    args: &[Value],
    fetch: &mut dyn FnMut(&StorageRef) -> Result<Vec<u8>, String>,
) -> Result<Value, String> {
    let (Some(Value::Storage(s)), Some(offset), Some(size), Some(stride)) =
        (args.first(), args.get(1), args.get(2), args.get(3))
    else {
        return Err("a tensor without storage, offset, size and stride".into());
    };
    let (offset, size, stride) = (int(offset)?, ints(size)?, ints(stride)?);
    let mut expected = 1usize;
    for (d, st) in size.iter().zip(&stride).rev() {
        if *d > 1 && *st != expected {
            return Err("holds a non-contiguous tensor".into());
        }
        expected = expected.saturating_mul(*d);
    }
    let numel: usize = size.iter().product();
    let es = element_size(&s.dtype)?;
    let bytes = fetch(s)?;
    let start = offset.checked_mul(es).ok_or("tensor offset overflows")?;
    let end = numel
        .checked_mul(es)
        .and_then(|n| n.checked_add(start))
        .ok_or("tensor size overflows")?;
    let data = bytes
        .get(start..end)
        .ok_or("a tensor is larger than its storage")?;
    Ok(Value::Tensor(size, decode(&s.dtype, data)))
}

impl Machine {
    fn pop(&mut self) -> Result<Value, String> {
        self.stack
            .pop()
            .ok_or_else(|| "pickle stack underflow".into())
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>, String> {
        let at = self
            .stack
            .iter()
            .rposition(|v| *v == Value::Mark)
            .ok_or("pickle MARK missing")?;
        let items = self.stack.split_off(at + 1);
        self.stack.pop();
        Ok(items)
    }

    fn top(&mut self) -> Result<&mut Value, String> {
        self.stack
            .last_mut()
            .ok_or_else(|| "pickle stack empty".into())
    }

    fn run(
        mut self,
        p: &[u8],
        fetch: &mut dyn FnMut(&StorageRef) -> Result<Vec<u8>, String>,
    ) -> Result<Value, String> {
        let mut i = 0usize;
        let take = |i: &mut usize, n: usize| -> Result<&[u8], String> {
            let end = i.checked_add(n).ok_or("pickle overflow")?;
            let s = p.get(*i..end).ok_or("pickle truncated")?;
            *i = end;
            Ok(s)
        };
        let uint = |b: &[u8]| b.iter().rev().fold(0u64, |a, &x| (a << 8) | x as u64);
        let line = |i: &mut usize| -> Result<String, String> {
            let rest = p.get(*i..).ok_or("pickle truncated")?;
            let n = rest
                .iter()
                .position(|&c| c == b'\n')
                .ok_or("pickle truncated")?;
            *i += n + 1;
            Ok(String::from_utf8_lossy(&rest[..n]).into_owned())
        };
        loop {
            let op = *take(&mut i, 1)?.first().ok_or("pickle truncated")?;
            match op {
                0x80 => {
                    take(&mut i, 1)?;
                } // PROTO
                0x95 => {
                    take(&mut i, 8)?;
                } // FRAME
                b'.' => return self.pop(),
                b'(' => self.stack.push(Value::Mark),
                b'}' => self.stack.push(Value::Dict(Vec::new())),
                b']' | b')' => self.stack.push(Value::List(Vec::new())),
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'K' => {
                    let v = take(&mut i, 1)?[0];
                    self.stack.push(Value::Int(v as i64))
                }
                b'M' => {
                    let v = uint(take(&mut i, 2)?);
                    self.stack.push(Value::Int(v as i64))
                }
                b'J' => {
                    let b = take(&mut i, 4)?;
                    self.stack.push(Value::Int(
                        i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64
                    ))
                }
                0x8a => {
                    // LONG1
                    let n = take(&mut i, 1)?[0] as usize;
                    let b = take(&mut i, n)?;
                    if n > 8 {
                        return Err("pickle integer too large".into());
                    }
                    let mut v = uint(b) as i64;
                    if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n);
                    }
                    self.stack.push(Value::Int(v))
                }
                b'G' => {
                    let b = take(&mut i, 8)?;
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    self.stack.push(Value::Float(f64::from_be_bytes(a)))
                }
                b'X' | 0x8c | 0x8d | b'T' | b'U' | b'B' | b'C' | 0x8e => {
                    let n = match op {
                        b'X' | b'T' | b'B' => uint(take(&mut i, 4)?),
                        0x8d | 0x8e => uint(take(&mut i, 8)?),
                        _ => uint(take(&mut i, 1)?),
                    };
                    let n = usize::try_from(n).map_err(|_| "pickle string too long")?;
                    let s = String::from_utf8_lossy(take(&mut i, n)?).into_owned();
                    self.stack.push(Value::Str(s))
                }
                b'c' => {
                    let module = line(&mut i)?;
                    let name = line(&mut i)?;
                    self.stack.push(Value::Global(format!("{module}.{name}")))
                }
                0x93 => {
                    // STACK_GLOBAL
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => {
                            self.stack.push(Value::Global(format!("{m}.{n}")))
                        }
                        _ => return Err("pickle STACK_GLOBAL without names".into()),
                    }
                }
                b'q' | b'r' | 0x94 => {
                    let k = match op {
                        b'q' => take(&mut i, 1)?[0] as u64,
                        b'r' => uint(take(&mut i, 4)?),
                        _ => self.memo.len() as u64,
                    };
                    let v = self.stack.last().ok_or("pickle stack empty")?;
                    self.copied += weight(v, MAX_COPIED);
                    if self.copied > MAX_COPIED {
                        return Err(
                            "is a pickle that refers to itself too often to be an embedding".into(),
                        );
                    }
                    let v = v.clone();
                    self.memo.insert(k, v);
                }
                b'h' | b'j' => {
                    let k = if op == b'h' {
                        take(&mut i, 1)?[0] as u64
                    } else {
                        uint(take(&mut i, 4)?)
                    };
                    let v = self.memo.get(&k).ok_or("pickle memo missing")?;
                    self.copied += weight(v, MAX_COPIED);
                    if self.copied > MAX_COPIED {
                        return Err(
                            "is a pickle that refers to itself too often to be an embedding".into(),
                        );
                    }
                    let v = v.clone();
                    self.stack.push(v)
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::List(items))
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let at = self
                        .stack
                        .len()
                        .checked_sub(n)
                        .ok_or("pickle stack underflow")?;
                    let items = self.stack.split_off(at);
                    self.stack.push(Value::List(items))
                }
                b'a' => {
                    let v = self.pop()?;
                    match self.top()? {
                        Value::List(l) => l.push(v),
                        _ => return Err("pickle APPEND to a non-list".into()),
                    }
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    match self.top()? {
                        Value::List(l) => l.extend(items),
                        _ => return Err("pickle APPENDS to a non-list".into()),
                    }
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    match self.top()? {
                        Value::Dict(d) => d.push((k, v)),
                        _ => return Err("pickle SETITEM on a non-dict".into()),
                    }
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let Value::Dict(d) = self.top()? else {
                        return Err("pickle SETITEMS on a non-dict".into());
                    };
                    let mut it = items.into_iter();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        d.push((k, v));
                    }
                }
                b'Q' => {
                    // BINPERSID: ('storage', <Storage class>, key, location, numel)
                    let pid = self.pop()?;
                    let Value::List(parts) = pid else {
                        return Err("pickle persistent id is not a tuple".into());
                    };
                    match (parts.get(1), parts.get(2)) {
                        (Some(Value::Global(cls)), Some(Value::Str(key))) => {
                            let dtype = cls.rsplit('.').next().unwrap_or_default().to_string();
                            self.stack.push(Value::Storage(StorageRef {
                                dtype,
                                key: key.clone(),
                            }))
                        }
                        _ => return Err("pickle persistent id is not a torch storage".into()),
                    }
                }
                b'R' => {
                    let args = self.pop()?;
                    let f = self.pop()?;
                    let Value::List(args) = args else {
                        return Err("pickle REDUCE without an argument tuple".into());
                    };
                    let v = match f {
                        Value::Global(g) => match g.as_str() {
                            "torch._utils._rebuild_tensor_v2" | "torch._utils._rebuild_tensor" => {
                                rebuild_tensor(&args, fetch)?
                            }
                            "torch._utils._rebuild_parameter"
                            | "torch._utils._rebuild_parameter_with_state" => {
                                args.into_iter().next().unwrap_or(Value::None)
                            }
                            "collections.OrderedDict" => Value::Dict(Vec::new()),
                            other => Value::Opaque(other.to_string()),
                        },
                        other => Value::Opaque(format!("{other:?}")),
                    };
                    self.stack.push(v)
                }
                b'b' => {
                    // BUILD: state for the object below; dicts and tensors keep what they are.
                    self.pop()?;
                }
                0x81 => {
                    // NEWOBJ
                    self.pop()?;
                    let cls = self.pop()?;
                    self.stack.push(Value::Opaque(format!("{cls:?}")))
                }
                other => {
                    return Err(format!(
                        "uses pickle opcode 0x{other:02x}, which a torch.save file does not"
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_an_a1111_embedding() {
        let bytes = std::fs::read("tests/fixtures/embeddings/tiny-style.pt").unwrap();
        let v = load(&bytes).unwrap();
        assert_eq!(v.get("name"), Some(&Value::Str("tiny-style".into())));
        assert_eq!(v.get("step"), Some(&Value::Int(500)));
        let Some(Value::Tensor(shape, data)) = v.get("string_to_param").and_then(|d| d.get("*"))
        else {
            panic!("{v:?}")
        };
        assert_eq!(shape, &vec![2, 16]);
        assert_eq!(data.len(), 32);
    }

    /// Seeded mutations of a real file: every one loads or is refused, none panics or runs away.
    #[test]
    fn damaged_files_are_refused_not_fatal() {
        let good = std::fs::read("tests/fixtures/embeddings/tiny-style.pt").unwrap();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..400 {
            let mut b = good.clone();
            for _ in 0..(next() % 8 + 1) {
                let at = (next() as usize) % b.len();
                b[at] = next() as u8;
            }
            if next() % 4 == 0 {
                b.truncate((next() as usize) % b.len());
            }
            let _ = load(&b);
        }
        // A pickle that doubles itself: refused quickly.
        let mut p = b"\x80\x02]q\x00".to_vec();
        for _ in 0..64 {
            p.extend_from_slice(b"h\x00h\x00\x86q\x00");
        }
        p.push(b'.');
        let fetch = &mut |_: &StorageRef| -> Result<Vec<u8>, String> { Err("none".into()) };
        assert!(Machine::default().run(&p, fetch).is_err());
    }

    #[test]
    fn refuses_what_is_not_a_torch_zip() {
        assert!(load(b"\x80\x02}q\x00.").unwrap_err().contains("legacy"));
        assert!(load(b"hello").is_err());
        assert!(load(b"PK\x03\x04garbage").is_err());
    }
}
