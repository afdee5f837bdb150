//! Fused elementwise programs: a tree of unary, binary and cast ops over
//! broadcast operands, run as one kernel (one pass over memory).

use std::fmt;

use crate::{BinaryOp, DType, UnaryOp};

/// A literal inlined into a fused program.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scalar {
    /// An `f32` literal.
    F32(f32),
    /// An `i32` literal.
    I32(i32),
}

impl Scalar {
    /// Its dtype.
    pub fn dtype(self) -> DType {
        match self {
            Scalar::F32(_) => DType::F32,
            Scalar::I32(_) => DType::I32,
        }
    }
}

/// One instruction; operands name earlier instructions by index.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Instr {
    /// Operand `i` of the kernel, broadcast to the output shape.
    Input(usize),
    /// A literal.
    Scalar(Scalar),
    /// A unary op of an earlier instruction.
    Unary(UnaryOp, usize),
    /// A binary op of two earlier instructions.
    Binary(BinaryOp, usize, usize),
    /// A cast of an earlier instruction.
    Cast(DType, usize),
}

/// A fused elementwise program. Instructions are in dependency order; the
/// last one is the result. `dtypes[i]` is the element type of instruction
/// `i`'s result. Every kernel operand broadcasts to the output shape.
#[derive(Debug, Clone, PartialEq)]
pub struct FusedExpr {
    /// The program.
    pub instrs: Vec<Instr>,
    /// The result type of each instruction.
    pub dtypes: Vec<DType>,
}

impl FusedExpr {
    /// How many kernel operands it reads.
    pub fn inputs(&self) -> usize {
        self.instrs
            .iter()
            .filter_map(|i| match i {
                Instr::Input(k) => Some(k + 1),
                _ => None,
            })
            .max()
            .unwrap_or(0)
    }
}

/// A canonical text form, e.g. `%2 = add(%0, %1); ...`: the key under which
/// backends cache compiled kernels.
impl fmt::Display for FusedExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (instr, dtype)) in self.instrs.iter().zip(&self.dtypes).enumerate() {
            if i > 0 {
                write!(f, "; ")?;
            }
            write!(f, "%{i}:{dtype} = ")?;
            match instr {
                Instr::Input(k) => write!(f, "in{k}")?,
                // Bits, so literals differing only in NaN payload differ.
                Instr::Scalar(Scalar::F32(x)) => write!(f, "{x:?}f#{:08x}", x.to_bits())?,
                Instr::Scalar(Scalar::I32(x)) => write!(f, "{x}i")?,
                Instr::Unary(op, a) => write!(f, "{}(%{a})", op.name())?,
                Instr::Binary(op, a, b) => write!(f, "{}(%{a}, %{b})", op.name())?,
                Instr::Cast(to, a) => write!(f, "cast<{to}>(%{a})")?,
            }
        }
        Ok(())
    }
}
