use thiserror::Error;

/// Everything that can go wrong while quantizing, loading or running a 4-bit tensor.
#[derive(Debug, Error)]
pub enum QuantError {
    /// The blocksize is outside 32..=4096 or not a power of two.
    #[error("invalid blocksize {0}: bitsandbytes supports powers of two from 32 to 4096")]
    InvalidBlocksize(usize),
    /// A quant type other than `nf4` / `fp4`.
    #[error("unknown quant type {0:?}: expected \"nf4\" or \"fp4\"")]
    UnknownQuantType(String),
    /// Input data does not have the number of elements its shape says.
    #[error("shape {shape:?} holds {expected} values but {actual} were given")]
    ShapeMismatch {
        /// The declared shape.
        shape: Vec<usize>,
        /// Elements the shape implies.
        expected: usize,
        /// Elements actually present.
        actual: usize,
    },
    /// A statistics or packed buffer has the wrong length for the shape and blocksize.
    #[error("{what} has length {actual}, expected {expected}")]
    LengthMismatch {
        /// Which buffer.
        what: String,
        /// Required length.
        expected: usize,
        /// Found length.
        actual: usize,
    },
    /// The input holds NaN or an infinity, which has no 4-bit code.
    #[error("cannot quantize a non-finite value ({value}) at index {index}")]
    NonFinite {
        /// Flat index of the first offending value.
        index: usize,
        /// The value.
        value: f32,
    },
    /// The quant_state JSON is malformed or inconsistent.
    #[error("invalid quant_state for {tensor:?}: {reason}")]
    InvalidQuantState {
        /// The tensor the state belongs to.
        tensor: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A safetensors file could not be read or written.
    #[error("{path}: {reason}")]
    Io {
        /// The file.
        path: String,
        /// What failed.
        reason: String,
    },
    /// A stored 8-bit weight or its `SCB` is missing, mistyped or inconsistent.
    #[error("invalid 8-bit weight {0}")]
    Format(String),
    /// An operation needs a shape it was not given (e.g. a matmul with a non-2D weight).
    #[error("unsupported: {0}")]
    Unsupported(String),
}
