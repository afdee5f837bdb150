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
    /// The output chunk's 32-bit lanes, as the register machine writes
    /// them (an f32 view of any 32-bit element's bits).
    fn bits(out: &mut [Self]) -> &mut [f32];
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
    fn bits(out: &mut [f32]) -> &mut [f32] {
        out
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
    fn bits(out: &mut [i32]) -> &mut [f32] {
        bytemuck::cast_slice_mut(out)
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

/// The vector instruction set the chunk loops run with. The loops are
/// compiled once per set (each wrapper below inlines the same generic
/// loop), and every set gives the same bits: no op is contracted into an
/// FMA or reassociated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Isa {
    /// Whatever the build targets (SSE2 on a plain x86-64 build).
    Base,
    /// AVX2 with FMA.
    Avx2,
    /// AVX-512 (F, BW, VL, DQ).
    Avx512,
}

impl Isa {
    /// The set the kernels use: the best this CPU runs, or a lesser one
    /// named by `TENSORGRAPH_CPU_ISA` (`base`, `avx2`, `avx512`), read once;
    /// a set the CPU lacks is never used.
    pub(super) fn detect() -> Isa {
        static CHOSEN: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *CHOSEN.get_or_init(|| {
            let best = Isa::best();
            let asked = match std::env::var("TENSORGRAPH_CPU_ISA") {
                Err(_) => best,
                Ok(v) => match v.to_ascii_lowercase().as_str() {
                    "base" => Isa::Base,
                    "avx2" => Isa::Avx2,
                    "avx512" => Isa::Avx512,
                    _ => {
                        tracing::warn!(
                            target: "tensorgraph",
                            "TENSORGRAPH_CPU_ISA={v:?} is none of base, avx2, avx512; using {best:?}"
                        );
                        best
                    }
                },
            };
            if asked < best { asked } else { best }
        })
    }

    /// The best set this CPU runs.
    pub(super) fn best() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            // Each level includes the one below: the AVX-512 builds also
            // enable AVX2 and FMA.
            if has!("avx2") && has!("fma") {
                let avx512 =
                    has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx512dq");
                return if avx512 { Isa::Avx512 } else { Isa::Avx2 };
            }
        }
        Isa::Base
    }

    /// Every set this CPU runs, plainest first.
    #[cfg(test)]
    pub(super) fn available() -> Vec<Isa> {
        [Isa::Base, Isa::Avx2, Isa::Avx512]
            .into_iter()
            .filter(|&i| i <= Isa::best())
            .collect()
    }
}

/// [`unary`] compiled for `isa`.
#[inline]
pub(super) fn unary_on<T: Element>(isa: Isa, op: UnaryOp, a: Src<'_, T>, d: &mut [T]) {
    match isa.min(Isa::best()) {
        // SAFETY: `Isa::best` found every feature the wrapper enables.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86::unary_avx512(op, a, d) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { x86::unary_avx2(op, a, d) },
        _ => unary(op, a, d),
    }
}

/// [`binary`] compiled for `isa`.
#[inline]
pub(super) fn binary_on<T: Element>(
    isa: Isa,
    op: BinaryOp,
    a: Src<'_, T>,
    b: Src<'_, T>,
    d: &mut [T],
) {
    match isa.min(Isa::best()) {
        // SAFETY: `Isa::best` found every feature the wrapper enables.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86::binary_avx512(op, a, b, d) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { x86::binary_avx2(op, a, b, d) },
        _ => binary(op, a, b, d),
    }
}

/// The chunk loops compiled with wider vectors.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{BinaryOp, Element, Src, UnaryOp, binary, unary};

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
    pub(super) fn unary_avx512<T: Element>(op: UnaryOp, a: Src<'_, T>, d: &mut [T]) {
        unary(op, a, d)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn unary_avx2<T: Element>(op: UnaryOp, a: Src<'_, T>, d: &mut [T]) {
        unary(op, a, d)
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
    pub(super) fn binary_avx512<T: Element>(
        op: BinaryOp,
        a: Src<'_, T>,
        b: Src<'_, T>,
        d: &mut [T],
    ) {
        binary(op, a, b, d)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn binary_avx2<T: Element>(op: BinaryOp, a: Src<'_, T>, b: Src<'_, T>, d: &mut [T]) {
        binary(op, a, b, d)
    }
}

/// A unary op over a chunk, with the unary kernel's per-element semantics.
#[inline(always)]
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
#[inline(always)]
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

/// A unary op of one f32, through the same code as a chunk.
pub(super) fn unary_scalar(op: UnaryOp, x: f32) -> f32 {
    let mut d = [0.0];
    unary(op, Src::Splat(x), &mut d);
    d[0]
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Floats with the awkward cases among ordinary ones, past a few
    /// vector widths (and not a multiple of any).
    fn floats() -> Vec<f32> {
        let special = [
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            -0.0,
            0.0,
            1e-40,
            -1e30,
        ];
        (0..203)
            .map(|i| {
                special
                    .get(i % 29)
                    .copied()
                    .unwrap_or((i as f32 - 100.0) * 0.173)
            })
            .collect()
    }

    fn ints() -> Vec<i32> {
        let special = [i32::MIN, i32::MAX, 0, -1, 1];
        (0..203)
            .map(|i| special.get(i % 23).copied().unwrap_or(i as i32 * 37 - 3000))
            .collect()
    }

    /// Every op on every instruction set this CPU has gives the bits of
    /// the plain build, slice and splat operands alike.
    fn same_bits<T: Element>(a: &[T], b: &[T], bits: impl Fn(T) -> u32) {
        let n = a.len();
        for isa in Isa::available() {
            let run1 = |isa, op, src| {
                let mut d = vec![T::default(); n];
                unary_on(isa, op, src, &mut d);
                d.into_iter().map(&bits).collect::<Vec<_>>()
            };
            for op in UnaryOp::ALL
                .into_iter()
                .filter(|op| T::DTYPE.is_float() || !op.float_only())
            {
                assert_eq!(
                    run1(isa, op, Src::Slice(a)),
                    run1(Isa::Base, op, Src::Slice(a)),
                    "{op:?} on {isa:?}"
                );
            }
            let run2 = |isa, op, x, y| {
                let mut d = vec![T::default(); n];
                binary_on(isa, op, x, y, &mut d);
                d.into_iter().map(&bits).collect::<Vec<_>>()
            };
            for op in BinaryOp::ALL {
                for (x, y) in [
                    (Src::Slice(a), Src::Slice(b)),
                    (Src::Slice(a), Src::Splat(b[7])),
                    (Src::Splat(a[3]), Src::Slice(b)),
                ] {
                    assert_eq!(
                        run2(isa, op, x, y),
                        run2(Isa::Base, op, x, y),
                        "{op:?} on {isa:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn every_instruction_set_gives_the_same_bits() {
        let f = floats();
        let g: Vec<f32> = f.iter().rev().map(|x| x * 0.5 + 0.25).collect();
        // Any NaN matches any NaN (see `machine::tests`).
        same_bits(&f, &g, |x| if x.is_nan() { u32::MAX } else { x.to_bits() });
        let i = ints();
        let j: Vec<i32> = i.iter().rev().map(|x| x / 3 - 1).collect();
        same_bits(&i, &j, |x| x as u32);
    }
}
