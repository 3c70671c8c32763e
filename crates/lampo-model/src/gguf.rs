//! GGUF reader (versions 2 and 3).
//!
//! The header, metadata and tensor table are parsed from a byte slice (a
//! memory map in practice) with every length, count and offset checked
//! against the bytes that are actually there, so a truncated or hostile file
//! yields a [`GgufError`] instead of a panic or an out-of-bounds read. Tensor
//! data is never copied: callers get sub-slices of the mapping.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use lampo_kernels::DType;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// GGML tensors have at most four dimensions.
const MAX_DIMS: u32 = 4;
/// Arrays of arrays are allowed by the format; deeper nesting is refused.
const MAX_ARRAY_DEPTH: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot open {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("not a GGUF file (magic bytes {0:02x?}, expected \"GGUF\")")]
    BadMagic([u8; 4]),
    #[error("unsupported GGUF version {0} (Lampo reads versions 2 and 3)")]
    UnsupportedVersion(u32),
    #[error("file truncated: {what} at byte {offset} needs {needed} bytes, {available} left")]
    Truncated {
        what: String,
        offset: usize,
        needed: u64,
        available: usize,
    },
    #[error("{what} count {count} at byte {offset} cannot fit in the {available} bytes left")]
    ImpossibleCount {
        what: String,
        count: u64,
        offset: usize,
        available: usize,
    },
    #[error("{what} at byte {offset} is not valid UTF-8")]
    BadUtf8 { what: String, offset: usize },
    #[error("metadata key '{key}' has unknown value type {ty}")]
    UnknownValueType { key: String, ty: u32 },
    #[error("metadata key '{key}' nests arrays deeper than {MAX_ARRAY_DEPTH} levels")]
    ArrayTooDeep { key: String },
    #[error("metadata key '{0}' appears twice")]
    DuplicateKey(String),
    #[error("general.alignment {0} is not a power of two")]
    BadAlignment(u64),
    #[error("tensor '{0}' appears twice")]
    DuplicateTensor(String),
    #[error("tensor '{name}' has {dims} dimensions (GGML allows 1 to {MAX_DIMS})")]
    BadDims { name: String, dims: u32 },
    #[error(
        "tensor '{name}' has shape {shape:?}: every dimension must be at least 1 and the element count must fit in 64 bits"
    )]
    BadShape { name: String, shape: Vec<u64> },
    #[error("tensor '{name}' has unknown or unsupported type id {ty}")]
    UnknownTensorType { name: String, ty: u32 },
    #[error(
        "tensor '{name}' is stored as {format}, a format Lampo does not run yet (it runs F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS)"
    )]
    UnsupportedFormat { name: String, format: &'static str },
    #[error(
        "tensor '{name}' of type {dtype} has rows of {row} values, not a multiple of its block size {block}"
    )]
    PartialBlock {
        name: String,
        dtype: DType,
        row: u64,
        block: usize,
    },
    #[error("tensor '{name}' offset {offset} is not a multiple of the alignment {alignment}")]
    MisalignedTensor {
        name: String,
        offset: u64,
        alignment: u64,
    },
    #[error(
        "tensor '{name}' spans bytes {start}..{end} of the data section, which has only {len} bytes"
    )]
    TensorOutOfBounds {
        name: String,
        start: u64,
        end: u64,
        len: u64,
    },
    #[error("tensors '{a}' and '{b}' overlap in the data section")]
    OverlappingTensors { a: String, b: String },
}

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    /// The value as an unsigned integer, if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            Value::U8(_) => "u8",
            Value::I8(_) => "i8",
            Value::U16(_) => "u16",
            Value::I16(_) => "i16",
            Value::U32(_) => "u32",
            Value::I32(_) => "i32",
            Value::F32(_) => "f32",
            Value::Bool(_) => "bool",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::U64(_) => "u64",
            Value::I64(_) => "i64",
            Value::F64(_) => "f64",
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::String(s) => write!(f, "{s:?}"),
            Value::Array(a) => {
                let inner = a.first().map_or("", |v| v.type_name());
                write!(f, "[{inner}; {}]", a.len())
            }
            Value::Bool(b) => write!(f, "{b}"),
            Value::F32(v) => write!(f, "{v}"),
            Value::F64(v) => write!(f, "{v}"),
            v => write!(
                f,
                "{}",
                v.as_u64()
                    .map_or_else(|| format!("{v:?}"), |n| n.to_string())
            ),
        }
    }
}

/// One entry of the tensor table.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    /// GGML order: `shape[0]` is the fastest-varying dimension (a row's length).
    pub shape: Vec<u64>,
    pub dtype: DType,
    /// Absolute byte offset of the data in the file.
    pub offset: usize,
    pub size: usize,
}

impl TensorInfo {
    pub fn elements(&self) -> u64 {
        self.shape.iter().product()
    }
}

/// A parsed GGUF header: metadata and tensor table.
#[derive(Debug)]
pub struct Gguf {
    pub version: u32,
    pub alignment: u64,
    /// Metadata in file order.
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
    /// Absolute offset where the tensor data section starts.
    pub data_offset: usize,
    key_index: HashMap<String, usize>,
    tensor_index: HashMap<String, usize>,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() as u64 {
            return Err(GgufError::Truncated {
                what: what(),
                offset: self.pos,
                needed: n,
                available: self.remaining(),
            });
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N], GgufError> {
        Ok(self
            .take(N as u64, what)?
            .try_into()
            .expect("take returns N bytes"))
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// Checks that `count` items of at least `min_size` bytes each can fit in
    /// what is left, before anything is allocated for them.
    fn check_count(
        &self,
        count: u64,
        min_size: u64,
        what: &dyn Fn() -> String,
    ) -> Result<(), GgufError> {
        if count.saturating_mul(min_size) > self.remaining() as u64 {
            return Err(GgufError::ImpossibleCount {
                what: what(),
                count,
                offset: self.pos,
                available: self.remaining(),
            });
        }
        Ok(())
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String, GgufError> {
        let len = self.u64(&|| format!("length of {}", what()))?;
        let start = self.pos;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| GgufError::BadUtf8 {
            what: what(),
            offset: start,
        })
    }

    fn value(&mut self, ty: u32, key: &str, depth: u32) -> Result<Value, GgufError> {
        let what = || format!("value of '{key}'");
        Ok(match ty {
            0 => Value::U8(self.array::<1>(&what)?[0]),
            1 => Value::I8(self.array::<1>(&what)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(&what)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(&what)?)),
            4 => Value::U32(u32::from_le_bytes(self.array(&what)?)),
            5 => Value::I32(i32::from_le_bytes(self.array(&what)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(&what)?)),
            7 => Value::Bool(self.array::<1>(&what)?[0] != 0),
            8 => Value::String(self.string(&what)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(GgufError::ArrayTooDeep {
                        key: key.to_string(),
                    });
                }
                let item_ty = self.u32(&|| format!("array type of '{key}'"))?;
                let len = self.u64(&|| format!("array length of '{key}'"))?;
                let min_size = match item_ty {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    _ => {
                        return Err(GgufError::UnknownValueType {
                            key: key.to_string(),
                            ty: item_ty,
                        });
                    }
                };
                self.check_count(len, min_size, &|| format!("array of '{key}'"))?;
                let mut items = Vec::with_capacity(len as usize);
                for _ in 0..len {
                    items.push(self.value(item_ty, key, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(u64::from_le_bytes(self.array(&what)?)),
            11 => Value::I64(i64::from_le_bytes(self.array(&what)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(&what)?)),
            _ => {
                return Err(GgufError::UnknownValueType {
                    key: key.to_string(),
                    ty,
                });
            }
        })
    }
}

impl Gguf {
    /// Parses and validates a whole GGUF file held in `buf`.
    pub fn parse(buf: &[u8]) -> Result<Gguf, GgufError> {
        let mut r = Reader { buf, pos: 0 };
        let magic: [u8; 4] = r.array(&|| "magic".into())?;
        if &magic != MAGIC {
            return Err(GgufError::BadMagic(magic));
        }
        let version = r.u32(&|| "version".into())?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::UnsupportedVersion(version));
        }
        let n_tensors = r.u64(&|| "tensor count".into())?;
        let n_kv = r.u64(&|| "metadata count".into())?;
        // A key-value pair takes at least 8 (key length) + 4 (type) + 1 bytes.
        r.check_count(n_kv, 13, &|| "metadata".into())?;

        let mut metadata = Vec::with_capacity(n_kv as usize);
        let mut key_index = HashMap::with_capacity(n_kv as usize);
        for i in 0..n_kv {
            let key = r.string(&|| format!("key of metadata entry {i}"))?;
            let ty = r.u32(&|| format!("value type of '{key}'"))?;
            let value = r.value(ty, &key, 0)?;
            if key_index.insert(key.clone(), metadata.len()).is_some() {
                return Err(GgufError::DuplicateKey(key));
            }
            metadata.push((key, value));
        }

        let alignment = match key_index.get("general.alignment") {
            Some(&i) => {
                let a = metadata[i].1.as_u64().unwrap_or(0);
                if a == 0 || !a.is_power_of_two() {
                    return Err(GgufError::BadAlignment(a));
                }
                a
            }
            None => DEFAULT_ALIGNMENT,
        };

        // A tensor info takes at least 8 (name length) + 4 + 8 + 4 + 8 bytes.
        r.check_count(n_tensors, 32, &|| "tensor".into())?;
        let mut raw = Vec::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            let name = r.string(&|| format!("name of tensor {i}"))?;
            let dims = r.u32(&|| format!("dimension count of '{name}'"))?;
            if dims == 0 || dims > MAX_DIMS {
                return Err(GgufError::BadDims { name, dims });
            }
            let mut shape = Vec::with_capacity(dims as usize);
            for d in 0..dims {
                shape.push(r.u64(&|| format!("dimension {d} of '{name}'"))?);
            }
            let ty = r.u32(&|| format!("type of '{name}'"))?;
            let offset = r.u64(&|| format!("offset of '{name}'"))?;
            raw.push((name, shape, ty, offset));
        }

        let data_offset = (r.pos as u64).next_multiple_of(alignment);
        let data_len = (buf.len() as u64).saturating_sub(data_offset);
        if n_tensors > 0 && data_offset > buf.len() as u64 {
            return Err(GgufError::Truncated {
                what: "padding before tensor data".into(),
                offset: r.pos,
                needed: data_offset - r.pos as u64,
                available: r.remaining(),
            });
        }

        let mut tensors = Vec::with_capacity(raw.len());
        let mut tensor_index = HashMap::with_capacity(raw.len());
        for (name, shape, ty, offset) in raw {
            let elements =
                shape.iter().try_fold(
                    1u64,
                    |acc, &d| if d == 0 { None } else { acc.checked_mul(d) },
                );
            let Some(elements) = elements else {
                return Err(GgufError::BadShape { name, shape });
            };
            let Some(dtype) = DType::from_ggml(ty) else {
                return Err(match ggml_format_name(ty) {
                    Some(format) => GgufError::UnsupportedFormat { name, format },
                    None => GgufError::UnknownTensorType { name, ty },
                });
            };
            if shape[0] % dtype.block_len() as u64 != 0 {
                return Err(GgufError::PartialBlock {
                    name,
                    dtype,
                    row: shape[0],
                    block: dtype.block_len(),
                });
            }
            let size = dtype
                .bytes_for(elements)
                .ok_or_else(|| GgufError::BadShape {
                    name: name.clone(),
                    shape: shape.clone(),
                })?;
            if offset % alignment != 0 {
                return Err(GgufError::MisalignedTensor {
                    name,
                    offset,
                    alignment,
                });
            }
            if offset.checked_add(size).is_none_or(|end| end > data_len) {
                return Err(GgufError::TensorOutOfBounds {
                    name,
                    start: offset,
                    end: offset.saturating_add(size),
                    len: data_len,
                });
            }
            if tensor_index.insert(name.clone(), tensors.len()).is_some() {
                return Err(GgufError::DuplicateTensor(name));
            }
            tensors.push(TensorInfo {
                name,
                shape,
                dtype,
                offset: (data_offset + offset) as usize,
                size: size as usize,
            });
        }

        // Overlapping tensors would alias weights: a sign of a corrupt table.
        let mut by_offset: Vec<&TensorInfo> = tensors.iter().collect();
        by_offset.sort_by_key(|t| t.offset);
        for pair in by_offset.windows(2) {
            if pair[0].offset + pair[0].size > pair[1].offset {
                return Err(GgufError::OverlappingTensors {
                    a: pair[0].name.clone(),
                    b: pair[1].name.clone(),
                });
            }
        }

        Ok(Gguf {
            version,
            alignment,
            metadata,
            tensors,
            data_offset: data_offset as usize,
            key_index,
            tensor_index,
        })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.key_index.get(key).map(|&i| &self.metadata[i].1)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }
}

/// A GGUF file mapped into memory.
pub struct GgufFile {
    pub gguf: Gguf,
    map: memmap2::Mmap,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<GgufFile, GgufError> {
        let io = |source| GgufError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: the mapping is read-only; Lampo never writes model files while
        // serving them, and a file truncated by another process underneath is
        // outside what any reader of mapped files can guard against.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        let gguf = Gguf::parse(&map)?;
        Ok(GgufFile { gguf, map })
    }

    /// The bytes of a tensor, a slice of the mapping (validated at parse time).
    pub fn data(&self, t: &TensorInfo) -> &[u8] {
        &self.map[t.offset..t.offset + t.size]
    }

    /// Bytes `offset..offset + size` of the file, for tensors found earlier.
    pub fn data_slice(&self, offset: usize, size: usize) -> &[u8] {
        &self.map[offset..offset + size]
    }

    /// Tells the kernel that bytes `offset..offset + size` will not be read
    /// soon, so their pages leave this process's resident memory; a later
    /// read maps them again from the page cache.
    pub fn release(&self, offset: usize, size: usize) {
        // SAFETY: DONTNEED on a read-only shared file mapping only drops page
        // table entries; contents read afterwards are the file's, unchanged.
        // Failure is harmless (the pages just stay resident).
        let _ = unsafe {
            self.map
                .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, size)
        };
    }

    pub fn file_size(&self) -> usize {
        self.map.len()
    }
}

/// The mapped file is where backends read weights in place.
impl lampo_kernels::Mapping for GgufFile {
    fn bytes(&self) -> &[u8] {
        &self.map
    }

    fn release(&self, range: std::ops::Range<usize>) {
        GgufFile::release(self, range.start, range.len());
    }
}

/// GGML's names of the tensor types Lampo does not run, so that a file in
/// one is refused by name.
fn ggml_format_name(id: u32) -> Option<&'static str> {
    Some(match id {
        9 => "Q8_1",
        15 => "Q8_K",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        21 => "IQ3_S",
        22 => "IQ2_S",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => return None,
    })
}
