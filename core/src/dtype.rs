//! Element types a tensor can hold, and the bridge from Rust scalar types.

use std::fmt;

/// The element type of a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// 32-bit IEEE float.
    F32,
    /// 32-bit signed integer; arithmetic wraps on overflow.
    I32,
}

impl DType {
    /// Bytes one element occupies.
    pub const fn size_bytes(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
        }
    }

    /// Whether the type is a floating-point type.
    pub const fn is_float(self) -> bool {
        match self {
            DType::F32 => true,
            DType::I32 => false,
        }
    }

    /// Lower-case name, as in error messages and DOT output.
    pub const fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::I32 => "i32",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
