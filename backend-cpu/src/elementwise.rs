//! Elementwise kernels: unary maps, broadcasting binary ops and casts.
//!
//! Every result is written into storage from the kernel's [`Alloc`] (a
//! freed buffer of the pool when one fits). Contiguous operands take a
//! flat slice path (one pass over memory, parallel chunks when large);
//! anything else goes through ndarray's broadcast views and `Zip`.

use ndarray::{ArrayD, ArrayViewD, IxDyn, Zip};
use rayon::prelude::*;
use tensorgraph_core::{BinaryOp, DType, Shape, UnaryOp, Value};

use crate::element::{Element, KResult, PAR_THRESHOLD, TypedKernel};
use crate::pool::{Alloc, Pooled};

/// Items per rayon task in flat loops, so splitting stays coarse.
const MIN_CHUNK: usize = 8 * 1024;

/// Fills `out` by `body(start, part)` over parts of it, `start` the index
/// of `part`'s first element: in parallel parts of [`MIN_CHUNK`] when
/// large, else at once.
fn fill<B: Send>(out: &mut [B], body: impl Fn(usize, &mut [B]) + Sync + Send) {
    if out.len() >= PAR_THRESHOLD {
        out.par_chunks_mut(MIN_CHUNK)
            .enumerate()
            .for_each(|(i, part)| body(i * MIN_CHUNK, part));
    } else {
        body(0, out);
    }
}

/// `f` over every element of `a` (possibly changing the element type),
/// in parallel when large.
fn map_unary<A: Element, B: Pooled>(
    a: &ArrayViewD<'_, A>,
    f: impl Fn(A) -> B + Sync + Send,
    alloc: Alloc<'_>,
) -> KResult<ArrayD<B>> {
    let mut out = alloc.array::<B>(a.raw_dim())?;
    match (a.as_slice(), out.as_slice_mut()) {
        (Some(x), Some(o)) => fill(o, |at, o| {
            for (o, &p) in o.iter_mut().zip(&x[at..]) {
                *o = f(p);
            }
        }),
        _ => {
            let zip = Zip::from(&mut out).and(a);
            if a.len() >= PAR_THRESHOLD {
                zip.par_for_each(|o, &p| *o = f(p));
            } else {
                zip.for_each(|o, &p| *o = f(p));
            }
        }
    }
    Ok(out)
}

/// `f` over `a` and `b` broadcast to `shape`, in parallel when large.
fn map_binary<T: Pooled>(
    a: &ArrayViewD<'_, T>,
    b: &ArrayViewD<'_, T>,
    shape: &Shape,
    f: impl Fn(T, T) -> T + Sync + Send,
    alloc: Alloc<'_>,
) -> KResult<ArrayD<T>> {
    let dims = IxDyn(shape.dims());
    let bad = |x: &ArrayViewD<'_, T>| format!("cannot broadcast {:?} to {shape}", x.shape());
    // Checked before any storage is taken.
    let av = a.broadcast(dims.clone()).ok_or_else(|| bad(a))?;
    let bv = b.broadcast(dims.clone()).ok_or_else(|| bad(b))?;
    let mut out = alloc.array::<T>(dims)?;
    let o = out
        .as_slice_mut()
        .ok_or("a new row-major output is not contiguous")?;
    let (full_a, full_b) = (a.shape() == shape.dims(), b.shape() == shape.dims());
    // Flat paths: equal contiguous shapes, or one side a single element.
    match (a.as_slice(), b.as_slice()) {
        (Some(x), Some(y)) if full_a && full_b => fill(o, |at, o| {
            for ((o, &p), &q) in o.iter_mut().zip(&x[at..]).zip(&y[at..]) {
                *o = f(p, q);
            }
        }),
        (Some(x), Some(&[q])) if full_a => fill(o, |at, o| {
            for (o, &p) in o.iter_mut().zip(&x[at..]) {
                *o = f(p, q);
            }
        }),
        (Some(&[p]), Some(y)) if full_b => fill(o, |at, o| {
            for (o, &q) in o.iter_mut().zip(&y[at..]) {
                *o = f(p, q);
            }
        }),
        _ => {
            let zip = Zip::from(&mut out).and(&av).and(&bv);
            if shape.numel() >= PAR_THRESHOLD {
                zip.par_for_each(|o, &p, &q| *o = f(p, q));
            } else {
                zip.for_each(|o, &p, &q| *o = f(p, q));
            }
        }
    }
    Ok(out)
}

/// An elementwise op of one operand.
pub(crate) struct Unary(pub(crate) UnaryOp);

impl TypedKernel for Unary {
    fn run<T: Pooled>(
        &self,
        inputs: &[ArrayViewD<'_, T>],
        alloc: Alloc<'_>,
    ) -> KResult<Vec<ArrayD<T>>> {
        let [a] = inputs else {
            return Err(format!(
                "{} takes 1 operand, got {}",
                self.0.name(),
                inputs.len()
            ));
        };
        if self.0.float_only() && !T::DTYPE.is_float() {
            return Err(format!("{} is not defined for {}", self.0.name(), T::DTYPE));
        }
        let out = match self.0 {
            UnaryOp::Neg => map_unary(a, T::neg, alloc),
            UnaryOp::Abs => map_unary(a, T::abs, alloc),
            UnaryOp::Relu => map_unary(a, T::relu, alloc),
            UnaryOp::Exp => map_unary(a, |x| x.float_map(f32::exp), alloc),
            UnaryOp::Log => map_unary(a, |x| x.float_map(f32::ln), alloc),
            UnaryOp::Sqrt => map_unary(a, |x| x.float_map(f32::sqrt), alloc),
            UnaryOp::Tanh => map_unary(a, |x| x.float_map(f32::tanh), alloc),
            UnaryOp::Sigmoid => map_unary(a, |x| x.float_map(sigmoid), alloc),
            UnaryOp::Sin => map_unary(a, |x| x.float_map(f32::sin), alloc),
            UnaryOp::Cos => map_unary(a, |x| x.float_map(f32::cos), alloc),
        }?;
        Ok(vec![out])
    }
}

/// The logistic function, written so neither tail overflows.
pub(crate) fn sigmoid(x: f32) -> f32 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// An elementwise op of two broadcasting operands.
pub(crate) struct Binary<'a> {
    /// Which op.
    pub(crate) op: BinaryOp,
    /// The broadcast output shape.
    pub(crate) shape: &'a Shape,
}

impl TypedKernel for Binary<'_> {
    fn run<T: Pooled>(
        &self,
        inputs: &[ArrayViewD<'_, T>],
        alloc: Alloc<'_>,
    ) -> KResult<Vec<ArrayD<T>>> {
        let [a, b] = inputs else {
            return Err(format!(
                "{} takes 2 operands, got {}",
                self.op.name(),
                inputs.len()
            ));
        };
        let s = self.shape;
        let out = match self.op {
            BinaryOp::Add => map_binary(a, b, s, T::add, alloc),
            BinaryOp::Sub => map_binary(a, b, s, T::sub, alloc),
            BinaryOp::Mul => map_binary(a, b, s, T::mul, alloc),
            BinaryOp::Div => map_binary(a, b, s, T::div, alloc),
            BinaryOp::Max => map_binary(a, b, s, T::max2, alloc),
            BinaryOp::Min => map_binary(a, b, s, T::min2, alloc),
            BinaryOp::Pow => map_binary(a, b, s, T::pow, alloc),
        }?;
        Ok(vec![out])
    }
}

/// Converts `v` to `to`: f32 -> i32 truncates toward zero, saturates and
/// maps NaN to 0 (Rust's `as`); i32 -> f32 rounds to nearest.
pub(crate) fn cast(v: &Value, to: DType, alloc: Alloc<'_>) -> KResult<Value> {
    Ok(match (v, to) {
        (Value::F32(a), DType::F32) => Value::F32(a.clone()),
        (Value::I32(a), DType::I32) => Value::I32(a.clone()),
        (Value::F32(a), DType::I32) => Value::I32(map_unary(&a.view(), |x| x as i32, alloc)?),
        (Value::I32(a), DType::F32) => Value::F32(map_unary(&a.view(), |x| x as f32, alloc)?),
    })
}
