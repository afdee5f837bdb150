//! Compiled fused programs, kept by what they were compiled from: the
//! expression, each operand's kind and dtype, and the output's dims.
//!
//! A plan step runs the same expression over operands of the same kinds on
//! every run, so compiling it again each time (lowering to chunk steps and
//! to the register machine, about a third of a small kernel's time) is
//! waste. The compiled code holds no operand memory, only how to read each
//! operand; single-element operands are folded into the code as literals,
//! so their value is part of the key (and programs reading one are not
//! kept at all: see [`Program::compile`](super::Program)). One table
//! serves the process: the code is a pure function of its key, whichever
//! backend asks.

use std::sync::{Arc, Mutex, OnceLock};

use rustc_hash::FxHashMap;
use tensorgraph_core::{BinaryOp, DType, FusedExpr, Instr, Scalar, UnaryOp};

use super::operand::{Bound, Operand};

/// Programs kept at most; the table starts afresh past this.
const MAX_PROGRAMS: usize = 1024;

/// One word of a key. Each section of a key (lengths, instructions,
/// operands, dims) uses its own words, and an instruction's words name all
/// of it, so two different compiles never share a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Word {
    /// Instructions and dtypes: a malformed expression (the two differ)
    /// fails to compile and is never kept, but must not find another's
    /// code either.
    Len(usize, usize),
    Input(usize, DType),
    /// A literal: its bits (NaNs of every payload included), its own
    /// dtype and the instruction's.
    Literal(u32, DType, DType),
    Unary(UnaryOp, usize, DType),
    Binary(BinaryOp, usize, usize, DType),
    /// A cast: its target and the instruction's dtype.
    Cast(DType, usize, DType),
    /// A single-element operand, by its bits.
    Splat(u32, DType),
    Contig(DType),
    Strided(DType),
    /// The in-place donor.
    Output(DType),
    Dim(usize),
}

/// The key of compiling `expr` over `operands` into an output of `dims`.
pub(super) fn key(expr: &FusedExpr, operands: &[Bound<'_>], dims: &[usize]) -> Vec<Word> {
    let mut key = Vec::with_capacity(1 + expr.instrs.len() + operands.len() + dims.len());
    key.push(Word::Len(expr.instrs.len(), expr.dtypes.len()));
    for (&instr, &d) in expr.instrs.iter().zip(&expr.dtypes) {
        key.push(match instr {
            Instr::Input(k) => Word::Input(k, d),
            Instr::Scalar(Scalar::F32(x)) => Word::Literal(x.to_bits(), DType::F32, d),
            Instr::Scalar(Scalar::I32(x)) => Word::Literal(x as u32, DType::I32, d),
            Instr::Unary(op, a) => Word::Unary(op, a, d),
            Instr::Binary(op, a, b) => Word::Binary(op, a, b, d),
            Instr::Cast(to, a) => Word::Cast(to, a, d),
        });
    }
    for operand in operands {
        key.push(match operand {
            Bound::F32(o) => word(o, DType::F32, f32::to_bits),
            Bound::I32(o) => word(o, DType::I32, |x| x as u32),
        });
    }
    key.extend(dims.iter().map(|&d| Word::Dim(d)));
    key
}

fn word<T: Copy>(o: &Operand<'_, T>, d: DType, bits: fn(T) -> u32) -> Word {
    match o {
        Operand::Splat(x) => Word::Splat(bits(*x), d),
        Operand::Contig(_) => Word::Contig(d),
        Operand::Strided { .. } => Word::Strided(d),
        Operand::Output => Word::Output(d),
    }
}

/// The table: compiled code of type `C` by key.
pub(super) struct Cache<C> {
    table: OnceLock<Mutex<FxHashMap<Vec<Word>, Arc<C>>>>,
}

impl<C> Cache<C> {
    pub(super) const fn new() -> Self {
        Cache {
            table: OnceLock::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FxHashMap<Vec<Word>, Arc<C>>> {
        // Each critical section leaves the table consistent.
        let table = self.table.get_or_init(Mutex::default);
        table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The code kept under `key`, or `compile`'s, kept when it succeeds.
    /// The lock is not held while compiling: two threads may both compile
    /// a new key, and one result is kept.
    pub(super) fn get_or_compile<E>(
        &self,
        key: Vec<Word>,
        compile: impl FnOnce() -> Result<C, E>,
    ) -> Result<Arc<C>, E> {
        if let Some(code) = self.lock().get(key.as_slice()) {
            return Ok(code.clone());
        }
        let code = Arc::new(compile()?);
        let mut table = self.lock();
        if table.len() >= MAX_PROGRAMS {
            table.clear();
        }
        table.insert(key, code.clone());
        Ok(code)
    }

    /// Programs kept now.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether code is kept under `key`.
    #[cfg(test)]
    pub(super) fn contains(&self, key: &[Word]) -> bool {
        self.lock().contains_key(key)
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use ndarray::{ArrayD, IxDyn};
    use tensorgraph_core::Value;

    use super::*;
    use crate::fused::operand::bind;

    fn expr(literal: f32) -> FusedExpr {
        FusedExpr {
            instrs: vec![
                Instr::Input(0),
                Instr::Input(1),
                Instr::Scalar(Scalar::F32(literal)),
                Instr::Binary(BinaryOp::Mul, 0, 2),
                Instr::Binary(BinaryOp::Add, 3, 1),
            ],
            dtypes: vec![DType::F32; 5],
        }
    }

    /// The key of `expr(literal)` over `x` and `y` into `dims`.
    fn key_of(literal: f32, x: &Value, y: &Value, dims: &[usize]) -> Vec<Word> {
        let operands = [bind(x, dims).expect("x"), bind(y, dims).expect("y")];
        key(&expr(literal), &operands, dims)
    }

    #[test]
    fn keys_tell_apart_whatever_the_code_depends_on() {
        let f = |shape: &[usize], v: f32| Value::F32(ArrayD::from_elem(IxDyn(shape), v));
        let (x, y) = (f(&[4, 5], 1.0), f(&[4, 5], 2.0));
        let base = key_of(0.5, &x, &y, &[4, 5]);
        assert_eq!(
            base,
            key_of(0.5, &f(&[4, 5], 7.0), &f(&[4, 5], 8.0), &[4, 5])
        );
        let different = [
            // Literals by their bits: -0.0 and NaN payloads differ.
            key_of(-0.0, &x, &y, &[4, 5]),
            key_of(0.0, &x, &y, &[4, 5]),
            key_of(f32::NAN, &x, &y, &[4, 5]),
            key_of(f32::from_bits(0x7fc0_0001), &x, &y, &[4, 5]),
            // A single element is folded in by value.
            key_of(0.5, &x, &f(&[1], 2.0), &[4, 5]),
            key_of(0.5, &x, &f(&[1], 3.0), &[4, 5]),
            // Broadcast (strided) against contiguous.
            key_of(0.5, &x, &f(&[5], 2.0), &[4, 5]),
            // Output dims.
            key_of(0.5, &f(&[5, 4], 1.0), &f(&[5, 4], 2.0), &[5, 4]),
            // Operand dtype.
            key_of(
                0.5,
                &x,
                &Value::I32(ArrayD::from_elem(IxDyn(&[4, 5]), 2)),
                &[4, 5],
            ),
        ];
        // Malformed expressions (which fail to compile) never share a key
        // with a well-formed one: a cast's target, a literal's own dtype,
        // instructions past the dtypes, a donor operand.
        let g = Value::F32(ArrayD::from_elem(IxDyn(&[3]), 1.0));
        let one = [bind(&g, &[3]).expect("g")];
        let malformed = |instrs: Vec<Instr>, dtypes: Vec<DType>, operands: &[Bound<'_>]| {
            key(&FusedExpr { instrs, dtypes }, operands, &[3])
        };
        let (f, i) = (DType::F32, DType::I32);
        let neg = Instr::Unary(UnaryOp::Neg, 0);
        let pairs = [
            (
                malformed(vec![Instr::Input(0), Instr::Cast(f, 0)], vec![f, f], &one),
                malformed(vec![Instr::Input(0), Instr::Cast(i, 0)], vec![f, f], &one),
            ),
            (
                malformed(vec![Instr::Scalar(Scalar::F32(1.0))], vec![f], &[]),
                malformed(vec![Instr::Scalar(Scalar::I32(0x3f80_0000))], vec![f], &[]),
            ),
            (
                malformed(vec![Instr::Input(0), neg], vec![f, f], &one),
                malformed(
                    vec![Instr::Input(0), neg, Instr::Unary(UnaryOp::Abs, 1)],
                    vec![f, f],
                    &one,
                ),
            ),
            (
                malformed(vec![Instr::Input(0), neg], vec![f, f, f], &[]),
                malformed(
                    vec![Instr::Input(0), neg],
                    vec![f, f],
                    &[Bound::F32(Operand::Output)],
                ),
            ),
        ];
        for (n, (p, q)) in pairs.iter().enumerate() {
            assert_ne!(p, q, "malformed pair {n}");
        }
        for (i, k) in different.iter().enumerate() {
            assert_ne!(*k, base, "key {i}");
            for (j, other) in different.iter().enumerate().skip(i + 1) {
                assert_ne!(k, other, "keys {i} and {j}");
            }
        }
    }

    #[test]
    fn code_is_compiled_once_per_key_and_failures_are_not_kept() {
        let cache = Cache::<u32>::new();
        let calls = Cell::new(0);
        let compile = |v: u32| {
            calls.set(calls.get() + 1);
            Ok::<_, String>(v)
        };
        let k = |d| vec![Word::Dim(d)];
        let a = cache.get_or_compile(k(1), || compile(10)).expect("a");
        let b = cache.get_or_compile(k(1), || compile(11)).expect("b");
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!((*b, calls.get()), (10, 1));
        assert!(cache.get_or_compile(k(2), || Err::<u32, _>("no")).is_err());
        assert_eq!(*cache.get_or_compile(k(2), || compile(20)).expect("c"), 20);
        assert_eq!((cache.len(), calls.get()), (2, 2));
        // Past the limit the table starts afresh.
        for d in 3..3 + MAX_PROGRAMS {
            cache.get_or_compile(k(d), || compile(0)).expect("fill");
        }
        assert!(cache.len() <= MAX_PROGRAMS);
    }

    /// A program reading a single-element operand (folded in by value) is
    /// compiled every time, not kept; one over full operands is kept.
    #[test]
    fn programs_reading_a_single_element_are_not_kept() {
        let x = Value::F32(ArrayD::from_elem(IxDyn(&[6, 7]), 1.5));
        let one = Value::F32(ArrayD::from_elem(IxDyn(&[1]), 2.0));
        let full = Value::F32(ArrayD::from_elem(IxDyn(&[6, 7]), 2.0));
        let out = tensorgraph_core::TensorType::new(DType::F32, vec![6, 7]);
        // A literal no other test uses, so only this test keeps its code.
        let literal = 0.378_125;
        for (y, kept) in [(&one, false), (&full, true)] {
            let got = crate::fused::fused(&expr(literal), &out, &[&x, y]).expect("runs");
            let got = got.into_f32().expect("f32");
            assert!(got.iter().all(|&v| v == 1.5 * literal + 2.0));
            let k = key_of(literal, &x, y, &[6, 7]);
            assert_eq!(crate::fused::PROGRAMS.contains(&k), kept, "kept: {kept}");
        }
    }
}
