//! Elementwise kernels: unary maps, broadcasting binary ops and casts.
//!
//! Contiguous operands take a flat slice path (one pass over memory,
//! parallel chunks when large); anything else goes through ndarray's
//! broadcast views and `Zip`.

use ndarray::{ArrayD, ArrayViewD, IxDyn, Zip};
use rayon::prelude::*;
use tensorgraph_core::{BinaryOp, DType, Shape, UnaryOp, Value};

use crate::element::{Element, KResult, PAR_THRESHOLD, TypedKernel};

/// Items per rayon task in flat loops, so splitting stays coarse.
const MIN_CHUNK: usize = 8 * 1024;

/// `f` over every element of `a` (possibly changing the element type),
/// in parallel when large.
fn map_unary<A: Element, B: Element>(
    a: &ArrayViewD<'_, A>,
    f: impl Fn(A) -> B + Sync + Send,
) -> KResult<ArrayD<B>> {
    if let Some(s) = a.as_slice() {
        let out: Vec<B> = if s.len() >= PAR_THRESHOLD {
            s.par_iter()
                .with_min_len(MIN_CHUNK)
                .map(|&x| f(x))
                .collect()
        } else {
            s.iter().map(|&x| f(x)).collect()
        };
        return ArrayD::from_shape_vec(a.raw_dim(), out).map_err(|e| e.to_string());
    }
    Ok(if a.len() >= PAR_THRESHOLD {
        Zip::from(a).par_map_collect(|&x| f(x))
    } else {
        a.map(|&x| f(x))
    })
}

/// `f` over `a` and `b` broadcast to `shape`, in parallel when large.
fn map_binary<T: Element>(
    a: &ArrayViewD<'_, T>,
    b: &ArrayViewD<'_, T>,
    shape: &Shape,
    f: impl Fn(T, T) -> T + Sync + Send,
) -> KResult<ArrayD<T>> {
    let dims = IxDyn(shape.dims());
    let n = shape.numel();
    let same = a.shape() == shape.dims() && b.shape() == shape.dims();
    // Flat paths: equal contiguous shapes, or one side a single element.
    let flat: Option<Vec<T>> = match (a.as_slice(), b.as_slice()) {
        (Some(x), Some(y)) if same => Some(if n >= PAR_THRESHOLD {
            x.par_iter()
                .with_min_len(MIN_CHUNK)
                .zip(y.par_iter())
                .map(|(&p, &q)| f(p, q))
                .collect()
        } else {
            x.iter().zip(y).map(|(&p, &q)| f(p, q)).collect()
        }),
        (Some(x), Some(&[q])) if a.shape() == shape.dims() => Some(if n >= PAR_THRESHOLD {
            x.par_iter()
                .with_min_len(MIN_CHUNK)
                .map(|&p| f(p, q))
                .collect()
        } else {
            x.iter().map(|&p| f(p, q)).collect()
        }),
        (Some(&[p]), Some(y)) if b.shape() == shape.dims() => Some(if n >= PAR_THRESHOLD {
            y.par_iter()
                .with_min_len(MIN_CHUNK)
                .map(|&q| f(p, q))
                .collect()
        } else {
            y.iter().map(|&q| f(p, q)).collect()
        }),
        _ => None,
    };
    if let Some(out) = flat {
        return ArrayD::from_shape_vec(dims, out).map_err(|e| e.to_string());
    }
    let bad = |x: &ArrayViewD<'_, T>| format!("cannot broadcast {:?} to {shape}", x.shape());
    let av = a.broadcast(dims.clone()).ok_or_else(|| bad(a))?;
    let bv = b.broadcast(dims).ok_or_else(|| bad(b))?;
    let zip = Zip::from(&av).and(&bv);
    Ok(if n >= PAR_THRESHOLD {
        zip.par_map_collect(|&p, &q| f(p, q))
    } else {
        zip.map_collect(|&p, &q| f(p, q))
    })
}

/// An elementwise op of one operand.
pub(crate) struct Unary(pub(crate) UnaryOp);

impl TypedKernel for Unary {
    fn run<T: Element>(&self, inputs: &[ArrayViewD<'_, T>]) -> KResult<Vec<ArrayD<T>>> {
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
            UnaryOp::Neg => map_unary(a, T::neg),
            UnaryOp::Abs => map_unary(a, T::abs),
            UnaryOp::Relu => map_unary(a, T::relu),
            UnaryOp::Exp => map_unary(a, |x| x.float_map(f32::exp)),
            UnaryOp::Log => map_unary(a, |x| x.float_map(f32::ln)),
            UnaryOp::Sqrt => map_unary(a, |x| x.float_map(f32::sqrt)),
            UnaryOp::Tanh => map_unary(a, |x| x.float_map(f32::tanh)),
            UnaryOp::Sigmoid => map_unary(a, |x| x.float_map(sigmoid)),
            UnaryOp::Sin => map_unary(a, |x| x.float_map(f32::sin)),
            UnaryOp::Cos => map_unary(a, |x| x.float_map(f32::cos)),
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
    fn run<T: Element>(&self, inputs: &[ArrayViewD<'_, T>]) -> KResult<Vec<ArrayD<T>>> {
        let [a, b] = inputs else {
            return Err(format!(
                "{} takes 2 operands, got {}",
                self.op.name(),
                inputs.len()
            ));
        };
        let s = self.shape;
        let out = match self.op {
            BinaryOp::Add => map_binary(a, b, s, T::add),
            BinaryOp::Sub => map_binary(a, b, s, T::sub),
            BinaryOp::Mul => map_binary(a, b, s, T::mul),
            BinaryOp::Div => map_binary(a, b, s, T::div),
            BinaryOp::Max => map_binary(a, b, s, T::max2),
            BinaryOp::Min => map_binary(a, b, s, T::min2),
            BinaryOp::Pow => map_binary(a, b, s, T::pow),
        }?;
        Ok(vec![out])
    }
}

/// Converts `v` to `to`: f32 -> i32 truncates toward zero, saturates and
/// maps NaN to 0 (Rust's `as`); i32 -> f32 rounds to nearest.
pub(crate) fn cast(v: &Value, to: DType) -> KResult<Value> {
    Ok(match (v, to) {
        (Value::F32(a), DType::F32) => Value::F32(a.clone()),
        (Value::I32(a), DType::I32) => Value::I32(a.clone()),
        (Value::F32(a), DType::I32) => Value::I32(map_unary(&a.view(), |x| x as i32)?),
        (Value::I32(a), DType::F32) => Value::F32(map_unary(&a.view(), |x| x as f32)?),
    })
}
