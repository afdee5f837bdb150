//! Element types and the one place where a `Value` meets generic kernels:
//! the [`Element`] trait carries each dtype's scalar semantics, and
//! [`dispatch`] routes `Value`s to a [`TypedKernel`] by dtype.

use ndarray::{ArrayD, ArrayViewD};
use rayon::prelude::*;
use tensorgraph_core::{DType, Value};

use crate::pool::{Alloc, Pooled};

/// Below this many elements a kernel runs on the calling thread: handing
/// tiny work to rayon costs more than doing it.
pub(crate) const PAR_THRESHOLD: usize = 32 * 1024;

/// Kernels report failures as plain messages; the backend wraps them into
/// `Error::Backend` with the step's name.
pub(crate) type KResult<T> = std::result::Result<T, String>;

/// A scalar type a tensor can hold, with its arithmetic.
///
/// Integer arithmetic wraps; float arithmetic is IEEE with NaN propagating
/// through `max`/`min`.
pub(crate) trait Element:
    Copy + Send + Sync + Default + PartialEq + PartialOrd + std::fmt::Debug + 'static
{
    /// The dtype this type stands for.
    const DTYPE: DType;

    /// The array inside `v`, if `v` holds this type.
    fn array(v: &Value) -> Option<&ArrayD<Self>>;
    /// Wraps an array into a `Value`.
    fn into_value(a: ArrayD<Self>) -> Value;

    fn neg(self) -> Self;
    fn abs(self) -> Self;
    fn relu(self) -> Self;
    /// Transcendental ops; integers never get here (the builder rejects
    /// them and the unary kernel checks again), so the integer versions go
    /// through f32 only to stay total.
    fn float_map(self, f: fn(f32) -> f32) -> Self;

    fn add(self, b: Self) -> Self;
    fn sub(self, b: Self) -> Self;
    fn mul(self, b: Self) -> Self;
    fn div(self, b: Self) -> Self;
    fn max2(self, b: Self) -> Self;
    fn min2(self, b: Self) -> Self;
    fn pow(self, b: Self) -> Self;

    /// Sum of a slice; accurate (pairwise) for floats, wrapping for ints.
    fn sum(xs: &[Self]) -> Self;
    /// `sum / count`; an empty float mean is NaN, an empty int mean is 0.
    fn mean(sum: Self, count: usize) -> Self;

    /// `c = a x b` for row-major `a: [m, k]`, `b: [k, n]`, `c: [m, n]`
    /// (`c`'s contents on entry are ignored: it may be pooled storage;
    /// every element is written, zeros when `k` is 0). `threads > 1`
    /// lets the product go parallel.
    fn gemm(m: usize, n: usize, k: usize, a: &[Self], b: &[Self], c: &mut [Self], threads: usize);
}

/// Pairwise summation: blocks of 128 summed with 8 accumulators (which
/// vectorises), blocks combined as a balanced tree, so the error grows
/// with log(n) rather than n.
fn pairwise_sum(xs: &[f32]) -> f32 {
    const BLOCK: usize = 128;
    if xs.len() <= BLOCK {
        let mut acc = [0.0f32; 8];
        let chunks = xs.chunks_exact(8);
        let rest = chunks.remainder();
        for c in chunks {
            for (a, &x) in acc.iter_mut().zip(c) {
                *a += x;
            }
        }
        let mut s =
            ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
        for &x in rest {
            s += x;
        }
        s
    } else {
        let half = (xs.len() / 2).next_multiple_of(8);
        let (l, r) = xs.split_at(half.min(xs.len()));
        pairwise_sum(l) + pairwise_sum(r)
    }
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;

    fn array(v: &Value) -> Option<&ArrayD<f32>> {
        v.as_f32()
    }
    fn into_value(a: ArrayD<f32>) -> Value {
        Value::F32(a)
    }

    fn neg(self) -> f32 {
        -self
    }
    fn abs(self) -> f32 {
        f32::abs(self)
    }
    fn relu(self) -> f32 {
        // NaN stays NaN, as in the other backends.
        if self < 0.0 { 0.0 } else { self }
    }
    fn float_map(self, f: fn(f32) -> f32) -> f32 {
        f(self)
    }

    fn add(self, b: f32) -> f32 {
        self + b
    }
    fn sub(self, b: f32) -> f32 {
        self - b
    }
    fn mul(self, b: f32) -> f32 {
        self * b
    }
    fn div(self, b: f32) -> f32 {
        self / b
    }
    fn max2(self, b: f32) -> f32 {
        if self.is_nan() || b.is_nan() {
            f32::NAN
        } else if self >= b {
            self
        } else {
            b
        }
    }
    fn min2(self, b: f32) -> f32 {
        if self.is_nan() || b.is_nan() {
            f32::NAN
        } else if self <= b {
            self
        } else {
            b
        }
    }
    fn pow(self, b: f32) -> f32 {
        self.powf(b)
    }

    fn sum(xs: &[f32]) -> f32 {
        pairwise_sum(xs)
    }
    fn mean(sum: f32, count: usize) -> f32 {
        sum / count as f32
    }

    fn gemm(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c: &mut [f32], threads: usize) {
        if a.len() < m * k || b.len() < k * n || c.len() < m * n {
            return;
        }
        if m == 0 || n == 0 || k == 0 {
            c[..m * n].fill(0.0);
            return;
        }
        let parallelism = if threads > 1 {
            gemm::Parallelism::Rayon(threads)
        } else {
            gemm::Parallelism::None
        };
        // SAFETY: the slices were checked above to hold row-major [m, k],
        // [k, n] and [m, n] matrices, so every index gemm forms from these
        // strides is in bounds; `c` is borrowed mutably, so it aliases
        // neither operand. `read_dst = false`, so `c` is only written.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                c.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr(),
                1,
                k as isize,
                b.as_ptr(),
                1,
                n as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            );
        }
    }
}

impl Element for i32 {
    const DTYPE: DType = DType::I32;

    fn array(v: &Value) -> Option<&ArrayD<i32>> {
        v.as_i32()
    }
    fn into_value(a: ArrayD<i32>) -> Value {
        Value::I32(a)
    }

    fn neg(self) -> i32 {
        self.wrapping_neg()
    }
    fn abs(self) -> i32 {
        self.wrapping_abs()
    }
    fn relu(self) -> i32 {
        self.max(0)
    }
    fn float_map(self, f: fn(f32) -> f32) -> i32 {
        f(self as f32) as i32
    }

    fn add(self, b: i32) -> i32 {
        self.wrapping_add(b)
    }
    fn sub(self, b: i32) -> i32 {
        self.wrapping_sub(b)
    }
    fn mul(self, b: i32) -> i32 {
        self.wrapping_mul(b)
    }
    fn div(self, b: i32) -> i32 {
        if b == 0 { 0 } else { self.wrapping_div(b) }
    }
    fn max2(self, b: i32) -> i32 {
        self.max(b)
    }
    fn min2(self, b: i32) -> i32 {
        self.min(b)
    }
    fn pow(self, e: i32) -> i32 {
        if e >= 0 {
            self.wrapping_pow(e as u32)
        } else {
            // Truncated 1 / x^|e|: only 1 and -1 have a nonzero result.
            match self {
                1 => 1,
                -1 if e % 2 == 0 => 1,
                -1 => -1,
                _ => 0,
            }
        }
    }

    fn sum(xs: &[i32]) -> i32 {
        xs.iter().fold(0i32, |a, &x| a.wrapping_add(x))
    }
    fn mean(sum: i32, count: usize) -> i32 {
        if count == 0 {
            0
        } else {
            (i64::from(sum) / count as i64) as i32
        }
    }

    fn gemm(m: usize, n: usize, k: usize, a: &[i32], b: &[i32], c: &mut [i32], threads: usize) {
        if m * n == 0 || a.len() < m * k || b.len() < k * n || c.len() < m * n {
            return;
        }
        // i-k-j order: the inner loop runs along rows of `b` and `c`,
        // each row cleared first (`c` may hold a pooled buffer's data).
        let row = |(i, crow): (usize, &mut [i32])| {
            crow.fill(0);
            for (p, &aip) in a[i * k..(i + 1) * k].iter().enumerate() {
                for (cj, &bj) in crow.iter_mut().zip(&b[p * n..(p + 1) * n]) {
                    *cj = cj.wrapping_add(aip.wrapping_mul(bj));
                }
            }
        };
        if threads > 1 && m * n * k >= PAR_THRESHOLD {
            c[..m * n].par_chunks_mut(n).enumerate().for_each(row);
        } else {
            c[..m * n].chunks_mut(n).enumerate().for_each(row);
        }
    }
}

/// A kernel written once over every element type: takes views of its
/// operands (all of one dtype) and returns its outputs, their storage from
/// `alloc`.
pub(crate) trait TypedKernel {
    fn run<T: Pooled>(
        &self,
        inputs: &[ArrayViewD<'_, T>],
        alloc: Alloc<'_>,
    ) -> KResult<Vec<ArrayD<T>>>;
}

/// Runs `kernel` on `inputs` at their dtype: the single dtype dispatch of
/// the backend (casts aside, which change dtype by definition).
pub(crate) fn dispatch<K: TypedKernel>(
    kernel: &K,
    inputs: &[&Value],
    alloc: Alloc<'_>,
) -> KResult<Vec<Value>> {
    match inputs.first().map(|v| v.dtype()) {
        Some(DType::F32) => run_typed::<f32, K>(kernel, inputs, alloc),
        Some(DType::I32) => run_typed::<i32, K>(kernel, inputs, alloc),
        None => Err("kernel has no operands".into()),
    }
}

fn run_typed<T: Pooled, K: TypedKernel>(
    kernel: &K,
    inputs: &[&Value],
    alloc: Alloc<'_>,
) -> KResult<Vec<Value>> {
    let views = inputs
        .iter()
        .map(|v| {
            T::array(v)
                .map(|a| a.view())
                .ok_or_else(|| format!("operand holds {}, expected {}", v.dtype(), T::DTYPE))
        })
        .collect::<KResult<Vec<_>>>()?;
    Ok(kernel
        .run(&views, alloc)?
        .into_iter()
        .map(T::into_value)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairwise_sum_matches_f64() {
        let xs: Vec<f32> = (0..1_000_003)
            .map(|i| ((i % 1000) as f32) * 0.001 + 0.1)
            .collect();
        let exact: f64 = xs.iter().map(|&x| f64::from(x)).sum();
        let got = f64::from(pairwise_sum(&xs));
        assert!((got - exact).abs() / exact < 1e-6, "{got} vs {exact}");
        assert_eq!(pairwise_sum(&[]), 0.0);
    }

    #[test]
    fn integer_semantics() {
        assert_eq!(Element::div(7i32, 0), 0);
        assert_eq!(Element::div(-7i32, 2), -3);
        assert_eq!(Element::div(i32::MIN, -1), i32::MIN);
        assert_eq!(Element::pow(2i32, -1), 0);
        assert_eq!(Element::pow(-1i32, -3), -1);
        assert_eq!(Element::pow(-1i32, -2), 1);
        assert_eq!(Element::pow(0i32, -2), 0);
        assert_eq!(Element::pow(3i32, 3), 27);
        assert_eq!(Element::abs(i32::MIN), i32::MIN);
        assert_eq!(<i32 as Element>::mean(-7, 2), -3);
        assert_eq!(<i32 as Element>::mean(5, 0), 0);
        assert!(Element::max2(f32::NAN, 1.0).is_nan());
        assert!(Element::min2(1.0f32, f32::NAN).is_nan());
    }
}
