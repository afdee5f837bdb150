//! The per-chunk loops of the fused kernel: one plain (vectorisable)
//! loop per op over a slice or a splat, the per-dtype plumbing trait
//! [`Lane`], and the folding of literal-only instructions through the
//! same loops.

use tensorgraph_core::{BinaryOp, DType, Scalar, UnaryOp};

use super::Scratch;
use super::operand::{Bound, Operand};
use crate::element::{Element, KResult};
use crate::elementwise::sigmoid;

/// A chunk of a value: a slice, or one element standing for all.
#[derive(Clone, Copy)]
pub(super) enum Src<'s, T> {
    Slice(&'s [T]),
    Splat(T),
}

/// The output chunk, of the result's dtype.
pub(super) enum Out<'o> {
    F32(&'o mut [f32]),
    I32(&'o mut [i32]),
}

/// The per-dtype plumbing of the kernel: which scratch registers, operand
/// and output variants and literals hold this type.
pub(super) trait Lane: Element {
    fn regs(s: &Scratch) -> &[Vec<Self>];
    fn regs_mut(s: &mut Scratch) -> &mut [Vec<Self>];
    fn operand<'b, 'a>(b: &'b Bound<'a>) -> Option<&'b Operand<'a, Self>>;
    fn scalar(s: Scalar) -> Option<Self>;
    fn wrap(o: &mut [Self]) -> Out<'_>;
    fn out<'o>(o: &'o mut Out<'_>) -> Option<&'o mut [Self]>;
}

impl Lane for f32 {
    fn regs(s: &Scratch) -> &[Vec<f32>] {
        &s.f32
    }
    fn regs_mut(s: &mut Scratch) -> &mut [Vec<f32>] {
        &mut s.f32
    }
    fn operand<'b, 'a>(b: &'b Bound<'a>) -> Option<&'b Operand<'a, f32>> {
        match b {
            Bound::F32(o) => Some(o),
            Bound::I32(_) => None,
        }
    }
    fn scalar(s: Scalar) -> Option<f32> {
        match s {
            Scalar::F32(x) => Some(x),
            Scalar::I32(_) => None,
        }
    }
    fn wrap(o: &mut [f32]) -> Out<'_> {
        Out::F32(o)
    }
    fn out<'o>(o: &'o mut Out<'_>) -> Option<&'o mut [f32]> {
        match o {
            Out::F32(o) => Some(o),
            Out::I32(_) => None,
        }
    }
}

impl Lane for i32 {
    fn regs(s: &Scratch) -> &[Vec<i32>] {
        &s.i32
    }
    fn regs_mut(s: &mut Scratch) -> &mut [Vec<i32>] {
        &mut s.i32
    }
    fn operand<'b, 'a>(b: &'b Bound<'a>) -> Option<&'b Operand<'a, i32>> {
        match b {
            Bound::I32(o) => Some(o),
            Bound::F32(_) => None,
        }
    }
    fn scalar(s: Scalar) -> Option<i32> {
        match s {
            Scalar::I32(x) => Some(x),
            Scalar::F32(_) => None,
        }
    }
    fn wrap(o: &mut [i32]) -> Out<'_> {
        Out::I32(o)
    }
    fn out<'o>(o: &'o mut Out<'_>) -> Option<&'o mut [i32]> {
        match o {
            Out::I32(o) => Some(o),
            Out::F32(_) => None,
        }
    }
}

/// `d[i] = f(a[i])`: a plain loop the compiler vectorises.
#[inline(always)]
pub(super) fn map1<A: Copy, B: Copy>(a: Src<'_, A>, d: &mut [B], f: impl Fn(A) -> B) {
    match a {
        Src::Slice(x) => d.iter_mut().zip(x).for_each(|(o, &x)| *o = f(x)),
        Src::Splat(x) => d.fill(f(x)),
    }
}

/// `d[i] = f(a[i], b[i])`, one loop per slice/splat combination.
#[inline(always)]
pub(super) fn map2<T: Copy>(a: Src<'_, T>, b: Src<'_, T>, d: &mut [T], f: impl Fn(T, T) -> T) {
    match (a, b) {
        (Src::Slice(x), Src::Slice(y)) => d
            .iter_mut()
            .zip(x.iter().zip(y))
            .for_each(|(o, (&p, &q))| *o = f(p, q)),
        (Src::Slice(x), Src::Splat(q)) => d.iter_mut().zip(x).for_each(|(o, &p)| *o = f(p, q)),
        (Src::Splat(p), Src::Slice(y)) => d.iter_mut().zip(y).for_each(|(o, &q)| *o = f(p, q)),
        (Src::Splat(p), Src::Splat(q)) => d.fill(f(p, q)),
    }
}

/// A unary op over a chunk, with the unary kernel's per-element semantics.
pub(super) fn unary<T: Element>(op: UnaryOp, a: Src<'_, T>, d: &mut [T]) {
    match op {
        UnaryOp::Neg => map1(a, d, T::neg),
        UnaryOp::Abs => map1(a, d, T::abs),
        UnaryOp::Relu => map1(a, d, T::relu),
        UnaryOp::Exp => map1(a, d, |x| x.float_map(f32::exp)),
        UnaryOp::Log => map1(a, d, |x| x.float_map(f32::ln)),
        UnaryOp::Sqrt => map1(a, d, |x| x.float_map(f32::sqrt)),
        UnaryOp::Tanh => map1(a, d, |x| x.float_map(f32::tanh)),
        UnaryOp::Sigmoid => map1(a, d, |x| x.float_map(sigmoid)),
        UnaryOp::Sin => map1(a, d, |x| x.float_map(f32::sin)),
        UnaryOp::Cos => map1(a, d, |x| x.float_map(f32::cos)),
    }
}

/// A binary op over a chunk, with the binary kernel's semantics.
pub(super) fn binary<T: Element>(op: BinaryOp, a: Src<'_, T>, b: Src<'_, T>, d: &mut [T]) {
    match op {
        BinaryOp::Add => map2(a, b, d, T::add),
        BinaryOp::Sub => map2(a, b, d, T::sub),
        BinaryOp::Mul => map2(a, b, d, T::mul),
        BinaryOp::Div => map2(a, b, d, T::div),
        BinaryOp::Max => map2(a, b, d, T::max2),
        BinaryOp::Min => map2(a, b, d, T::min2),
        BinaryOp::Pow => map2(a, b, d, T::pow),
    }
}

/// A unary op of a literal, through the same code as a chunk.
pub(super) fn fold_unary(op: UnaryOp, s: Scalar) -> Scalar {
    match s {
        Scalar::F32(x) => {
            let mut d = [0.0];
            unary(op, Src::Splat(x), &mut d);
            Scalar::F32(d[0])
        }
        Scalar::I32(x) => {
            let mut d = [0];
            unary(op, Src::Splat(x), &mut d);
            Scalar::I32(d[0])
        }
    }
}

/// A binary op of two literals, through the same code as a chunk.
pub(super) fn fold_binary(op: BinaryOp, a: Scalar, b: Scalar) -> KResult<Scalar> {
    Ok(match (a, b) {
        (Scalar::F32(x), Scalar::F32(y)) => {
            let mut d = [0.0];
            binary(op, Src::Splat(x), Src::Splat(y), &mut d);
            Scalar::F32(d[0])
        }
        (Scalar::I32(x), Scalar::I32(y)) => {
            let mut d = [0];
            binary(op, Src::Splat(x), Src::Splat(y), &mut d);
            Scalar::I32(d[0])
        }
        _ => return Err(format!("fused {}: literals of two dtypes", op.name())),
    })
}

/// A cast of a literal, with the cast kernel's semantics.
pub(super) fn cast_scalar(s: Scalar, to: DType) -> Scalar {
    match (s, to) {
        (Scalar::F32(x), DType::F32) => Scalar::F32(x),
        (Scalar::I32(x), DType::I32) => Scalar::I32(x),
        (Scalar::F32(x), DType::I32) => Scalar::I32(x as i32),
        (Scalar::I32(x), DType::F32) => Scalar::F32(x as f32),
    }
}
