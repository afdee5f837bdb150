//! The register machine: the fused kernel for f32 and i32 expressions
//! (casts included) on CPUs with AVX2 or AVX-512.
//!
//! The chunk program (`Exec` steps) makes one pass over an L1-resident
//! chunk per op, loading its operands and storing its result each time; at
//! eight or nine ops those passes, not DRAM, bound the kernel. Here the
//! program runs over blocks of eight vectors (128 elements with AVX-512,
//! 64 with AVX2) with its running value, the accumulator, held in eight
//! vector registers, so an op costs one dispatch and eight vector
//! instructions (four vectors measured 45% slower: the dispatch showed).
//! Ops are flat: each names its operation and where its operand is, a
//! literal or a slot of the block's pointer table, which holds every
//! operand's elements of the block (set once per block) and the block
//! registers. Resolving an operand per op through its kind, and a second
//! dispatch on the operation, took 40% of the kernel's time. A value read
//! again later is stored to a block register in L1 just before the
//! accumulator is overwritten. Operands are read in place (row-major ones)
//! or gathered per block (broadcast and strided ones, the in-place donor,
//! and every operand of a short last block). Transcendental ops, `pow` and
//! i32 division run out of line, lane by lane, on block registers: the accumulator is
//! stored to one and loaded back from another around them, and stays in
//! vector registers through every other op (called with it as an argument,
//! they made LLVM keep it on the stack throughout: four times slower).
//!
//! Results are bit for bit those of the chunk program (NaNs being NaNs,
//! whatever their sign and payload): the vector ops are
//! IEEE-exact (add, sub, mul, div, sqrt), `max`/`min`/`relu` are blends
//! that follow [`Element`]'s comparisons exactly (NaN in, NaN out; ties
//! keep the first operand), and transcendental ops and `pow` run the same
//! scalar functions lane by lane.
//!
//! Lanes are 32 bits, held as f32 vectors: i32 values are the same bits,
//! reinterpreted by the integer ops (wrapping add, sub, mul; max, min,
//! abs, neg, relu), and casts convert with Rust's `as` semantics
//! (truncating, saturating, NaN to 0; rounding to nearest). Integer
//! division and `pow` run lane by lane like f32 `pow`. Every expression
//! keeps the chunk program on CPUs without AVX2.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use tensorgraph_core::{BinaryOp, DType, FusedExpr, Instr, Scalar, UnaryOp};

use super::args;
use super::chunk::{Isa, cast_scalar, fold_binary, fold_unary};
use super::operand::{Bound, Operand, gather};
use crate::element::{Element, KResult};

/// The widest block: eight AVX-512 vectors.
const MAX_W: usize = 128;

/// Where an op reads a value: a literal, a slot of the block's pointer
/// table (an operand's elements of the block, or a block register), or
/// the accumulator itself (`x op x`).
#[derive(Debug, Clone, Copy)]
enum Src {
    Splat(f32),
    Slot(u32),
    Acc,
}

/// One op of the machine. Ops are flat: each variant is one operation on
/// one kind of operand, so an op costs a single dispatch, with no second
/// branch on where its operand is (a nested op-then-operand dispatch cost
/// a third of the kernel's time, and a branch on the operand's kind a
/// further 9%). Binary ops take a literal (`K`), a slot of the block's
/// pointer table (`M`) or the accumulator itself (`A`, `x op x`); the
/// `Rev` forms compute `operand op acc`. All but `Store`, `Lanes` and
/// `Lanes2` overwrite the accumulator; those three write block registers,
/// running out of line on memory (see the module's documentation).
#[derive(Debug, Clone, Copy)]
enum Op {
    LoadK(f32),
    LoadM(u32),
    /// Block register `slot` = the accumulator.
    Store(u32),
    Neg,
    Abs,
    Relu,
    Sqrt,
    AddK(f32),
    AddM(u32),
    AddA,
    SubK(f32),
    SubM(u32),
    SubA,
    SubRevK(f32),
    SubRevM(u32),
    MulK(f32),
    MulM(u32),
    MulA,
    DivK(f32),
    DivM(u32),
    DivA,
    DivRevK(f32),
    DivRevM(u32),
    MaxK(f32),
    MaxM(u32),
    MaxA,
    MaxRevK(f32),
    MaxRevM(u32),
    MinK(f32),
    MinM(u32),
    MinA,
    MinRevK(f32),
    MinRevM(u32),
    // i32 (wrapping, as `Element for i32`); literals hold the i32's bits.
    // Add, mul, max and min commute exactly, so have no `Rev` forms.
    IAddK(f32),
    IAddM(u32),
    IAddA,
    ISubK(f32),
    ISubM(u32),
    ISubA,
    ISubRevK(f32),
    ISubRevM(u32),
    IMulK(f32),
    IMulM(u32),
    IMulA,
    IMaxK(f32),
    IMaxM(u32),
    IMinK(f32),
    IMinM(u32),
    INeg,
    IAbs,
    IRelu,
    /// f32 to i32 as Rust's `as` (truncating, saturating, NaN to 0).
    F32ToI32,
    /// i32 to f32, rounding to nearest.
    I32ToF32,
    /// Block register `slot` = `op` of itself, lane by lane (f32).
    Lanes {
        op: UnaryOp,
        slot: u32,
    },
    /// Block register `out` = `a op b`, lane by lane, in `dtype` (f32 pow,
    /// i32 pow and division); `a` and `b` are literals or slots.
    Lanes2 {
        op: BinaryOp,
        dtype: DType,
        a: Src,
        b: Src,
        out: u32,
    },
}

impl Op {
    /// `acc = acc op src` (`src op acc` when `rev`). Pow is `Op::Lanes2`.
    fn binary(op: BinaryOp, rev: bool, src: Src) -> KResult<Op> {
        use Op::*;
        use Src::{Acc as A, Slot as M, Splat as K};
        // `x op x` reads the same either way round.
        let rev = rev && !matches!(src, A);
        Ok(match (op, rev, src) {
            (BinaryOp::Add, _, K(x)) => AddK(x),
            (BinaryOp::Add, _, M(k)) => AddM(k),
            (BinaryOp::Add, _, A) => AddA,
            (BinaryOp::Mul, _, K(x)) => MulK(x),
            (BinaryOp::Mul, _, M(k)) => MulM(k),
            (BinaryOp::Mul, _, A) => MulA,
            (BinaryOp::Sub, false, K(x)) => SubK(x),
            (BinaryOp::Sub, false, M(k)) => SubM(k),
            (BinaryOp::Sub, _, A) => SubA,
            (BinaryOp::Sub, true, K(x)) => SubRevK(x),
            (BinaryOp::Sub, true, M(k)) => SubRevM(k),
            (BinaryOp::Div, false, K(x)) => DivK(x),
            (BinaryOp::Div, false, M(k)) => DivM(k),
            (BinaryOp::Div, _, A) => DivA,
            (BinaryOp::Div, true, K(x)) => DivRevK(x),
            (BinaryOp::Div, true, M(k)) => DivRevM(k),
            (BinaryOp::Max, false, K(x)) => MaxK(x),
            (BinaryOp::Max, false, M(k)) => MaxM(k),
            (BinaryOp::Max, _, A) => MaxA,
            (BinaryOp::Max, true, K(x)) => MaxRevK(x),
            (BinaryOp::Max, true, M(k)) => MaxRevM(k),
            (BinaryOp::Min, false, K(x)) => MinK(x),
            (BinaryOp::Min, false, M(k)) => MinM(k),
            (BinaryOp::Min, _, A) => MinA,
            (BinaryOp::Min, true, K(x)) => MinRevK(x),
            (BinaryOp::Min, true, M(k)) => MinRevM(k),
            (BinaryOp::Pow, ..) => return Err("fused machine: pow is not a vector op".into()),
        })
    }

    /// The i32 form of `acc = acc op src` (`src op acc` when `rev`); div
    /// and pow are `Op::Lanes2`.
    fn binary_i32(op: BinaryOp, rev: bool, src: Src) -> KResult<Op> {
        use Op::*;
        use Src::{Acc as A, Slot as M, Splat as K};
        let rev = rev && !matches!(src, A);
        Ok(match (op, rev, src) {
            (BinaryOp::Add, _, K(x)) => IAddK(x),
            (BinaryOp::Add, _, M(k)) => IAddM(k),
            (BinaryOp::Add, _, A) => IAddA,
            (BinaryOp::Mul, _, K(x)) => IMulK(x),
            (BinaryOp::Mul, _, M(k)) => IMulM(k),
            (BinaryOp::Mul, _, A) => IMulA,
            (BinaryOp::Sub, false, K(x)) => ISubK(x),
            (BinaryOp::Sub, false, M(k)) => ISubM(k),
            (BinaryOp::Sub, _, A) => ISubA,
            (BinaryOp::Sub, true, K(x)) => ISubRevK(x),
            (BinaryOp::Sub, true, M(k)) => ISubRevM(k),
            (BinaryOp::Max, _, K(x)) => IMaxK(x),
            (BinaryOp::Max, _, M(k)) => IMaxM(k),
            (BinaryOp::Min, _, K(x)) => IMinK(x),
            (BinaryOp::Min, _, M(k)) => IMinM(k),
            // `Build::binary` computes nothing for max(x, x) and min(x, x).
            (BinaryOp::Max | BinaryOp::Min, _, A) | (BinaryOp::Div | BinaryOp::Pow, ..) => {
                return Err(format!(
                    "fused machine: i32 {} is not a vector op here",
                    op.name()
                ));
            }
        })
    }

    /// `acc = src`.
    fn load(src: Src) -> KResult<Op> {
        match src {
            Src::Splat(x) => Ok(Op::LoadK(x)),
            Src::Slot(k) => Ok(Op::LoadM(k)),
            Src::Acc => Err("fused machine: a load of the accumulator".into()),
        }
    }

    /// What the op reads other than the accumulator (literals, slots),
    /// and the block register it writes, if any.
    fn slots(&self) -> ([Option<Src>; 2], Option<u32>) {
        use Op::*;
        match *self {
            LoadM(k) | AddM(k) | SubM(k) | SubRevM(k) | MulM(k) | DivM(k) | DivRevM(k)
            | MaxM(k) | MaxRevM(k) | MinM(k) | MinRevM(k) | IAddM(k) | ISubM(k) | ISubRevM(k)
            | IMulM(k) | IMaxM(k) | IMinM(k) => ([Some(Src::Slot(k)), None], None),
            Store(k) => ([None, None], Some(k)),
            Lanes { slot, .. } => ([Some(Src::Slot(slot)), None], Some(slot)),
            Lanes2 { a, b, out, .. } => ([Some(a), Some(b)], Some(out)),
            LoadK(_) | Neg | Abs | Relu | Sqrt | AddK(_) | AddA | SubK(_) | SubA | SubRevK(_)
            | MulK(_) | MulA | DivK(_) | DivA | DivRevK(_) | MaxK(_) | MaxA | MaxRevK(_)
            | MinK(_) | MinA | MinRevK(_) | IAddK(_) | IAddA | ISubK(_) | ISubA | ISubRevK(_)
            | IMulK(_) | IMulA | IMaxK(_) | IMinK(_) | INeg | IAbs | IRelu | F32ToI32
            | I32ToF32 => ([None, None], None),
        }
    }
}

/// What an instruction's value is, at compile time.
#[derive(Debug, Clone, Copy)]
enum Val {
    Splat(f32),
    Input(usize),
    Computed,
}

/// A compiled block program over 32-bit lanes.
#[derive(Debug)]
pub(super) struct Machine {
    ops: Vec<Op>,
    /// The result's dtype: the output the machine writes.
    out: DType,
    /// Operands it was compiled for: slots `0..operands` are theirs, the
    /// block registers follow.
    operands: usize,
    /// Block registers the program uses.
    regs: usize,
    /// Operands the program reads that are not literals.
    reads: Vec<usize>,
}

/// The compiler's state: the ops so far, which value the accumulator
/// holds, and where stored values are.
struct Build {
    ops: Vec<Op>,
    val: Vec<Val>,
    /// Later instructions reading each value.
    uses: Vec<usize>,
    /// The block register holding each value, if stored.
    stored: Vec<Option<usize>>,
    acc: Option<usize>,
    free: Vec<usize>,
    regs: usize,
    /// Operands: the first register's slot.
    operands: usize,
}

impl Build {
    /// Register `r`'s slot in the block's pointer table.
    fn slot(&self, r: usize) -> u32 {
        // Slots are few (operands plus registers); `compile` rejects a
        // program whose total does not fit before any op is used.
        (self.operands + r) as u32
    }

    /// A free block register.
    fn take_reg(&mut self) -> usize {
        self.free.pop().unwrap_or_else(|| {
            self.regs += 1;
            self.regs - 1
        })
    }

    /// Where value `v` can be read from, other than the accumulator.
    fn arg(&self, v: usize) -> KResult<Src> {
        match (self.val[v], self.stored[v]) {
            (Val::Splat(x), _) => Ok(Src::Splat(x)),
            (Val::Input(k), _) => Ok(Src::Slot(k as u32)),
            (Val::Computed, Some(r)) => Ok(Src::Slot(self.slot(r))),
            (Val::Computed, None) => Err(format!("fused machine: %{v} was not kept")),
        }
    }

    /// Where value `v` can be read from in memory: the accumulator's
    /// value is stored to register `tmp` first, unless it was kept.
    fn mem_arg(&mut self, v: usize, tmp: usize) -> KResult<Src> {
        if self.acc == Some(v) && self.stored[v].is_none() {
            let slot = self.slot(tmp);
            if !matches!(self.ops.last(), Some(Op::Store(s)) if *s == slot) {
                self.ops.push(Op::Store(slot));
            }
            return Ok(Src::Slot(slot));
        }
        self.arg(v)
    }

    /// Before instruction `i` overwrites the accumulator: stores the value
    /// it holds when an instruction after `i` still reads it.
    fn spill(&mut self, i: &Instr) {
        let Some(v) = self.acc else { return };
        let (a, k) = args(i);
        let after = self.uses[v] - usize::from(a[..k].contains(&v));
        if matches!(self.val[v], Val::Computed) && self.stored[v].is_none() && after > 0 {
            let r = self.take_reg();
            self.ops.push(Op::Store(self.slot(r)));
            self.stored[v] = Some(r);
        }
    }

    /// Loads `v` into the accumulator unless it is there.
    fn load(&mut self, v: usize) -> KResult<()> {
        if self.acc != Some(v) {
            let arg = self.arg(v)?;
            self.ops.push(Op::load(arg)?);
        }
        Ok(())
    }

    /// `op(a)` into the accumulator, `a` of `dtype`.
    fn unary(&mut self, op: UnaryOp, a: usize, dtype: DType) -> KResult<()> {
        self.load(a)?;
        if dtype == DType::I32 {
            self.ops.push(match op {
                UnaryOp::Neg => Op::INeg,
                UnaryOp::Abs => Op::IAbs,
                UnaryOp::Relu => Op::IRelu,
                _ => return Err(format!("fused machine: i32 {}", op.name())),
            });
            return Ok(());
        }
        match op {
            UnaryOp::Neg => self.ops.push(Op::Neg),
            UnaryOp::Abs => self.ops.push(Op::Abs),
            UnaryOp::Relu => self.ops.push(Op::Relu),
            UnaryOp::Sqrt => self.ops.push(Op::Sqrt),
            UnaryOp::Exp
            | UnaryOp::Log
            | UnaryOp::Tanh
            | UnaryOp::Sigmoid
            | UnaryOp::Sin
            | UnaryOp::Cos => {
                let r = self.take_reg();
                let slot = self.slot(r);
                self.ops.push(Op::Store(slot));
                self.ops.push(Op::Lanes { op, slot });
                self.ops.push(Op::LoadM(slot));
                self.free_slot(slot);
            }
        }
        Ok(())
    }

    /// `x op y` into the accumulator, both of `dtype`.
    fn binary(&mut self, op: BinaryOp, x: usize, y: usize, dtype: DType) -> KResult<()> {
        let int = dtype == DType::I32;
        if op == BinaryOp::Pow || (int && op == BinaryOp::Div) {
            let tmp = self.take_reg();
            let a = self.mem_arg(x, tmp)?;
            let b = self.mem_arg(y, tmp)?;
            let out = self.take_reg();
            let out = self.slot(out);
            self.ops.push(Op::Lanes2 {
                op,
                dtype,
                a,
                b,
                out,
            });
            self.ops.push(Op::LoadM(out));
            self.free_slot(out);
            self.free.push(tmp);
            return Ok(());
        }
        if int && x == y && matches!(op, BinaryOp::Max | BinaryOp::Min) {
            // max(x, x) and min(x, x) are x.
            return self.load(x);
        }
        let (src, rev) = if x == y {
            self.load(x)?;
            (Src::Acc, false)
        } else if self.acc == Some(y) {
            (self.arg(x)?, true)
        } else {
            self.load(x)?;
            (self.arg(y)?, false)
        };
        self.ops.push(if int {
            Op::binary_i32(op, rev, src)?
        } else {
            Op::binary(op, rev, src)?
        });
        Ok(())
    }

    /// `a`, of dtype `from`, cast to `to` into the accumulator.
    fn cast(&mut self, a: usize, from: DType, to: DType) -> KResult<()> {
        self.load(a)?;
        match (from, to) {
            (DType::F32, DType::I32) => self.ops.push(Op::F32ToI32),
            (DType::I32, DType::F32) => self.ops.push(Op::I32ToF32),
            // The same bits: nothing to convert.
            _ => {}
        }
        Ok(())
    }

    /// A temporary register's slot is free again.
    fn free_slot(&mut self, slot: u32) {
        self.free.push(slot as usize - self.operands);
    }

    /// Instruction `i` has run: its operands have one reader fewer.
    fn consumed(&mut self, i: &Instr) {
        let (a, k) = args(i);
        for &v in &a[..k] {
            self.uses[v] -= 1;
            if self.uses[v] == 0
                && let Some(r) = self.stored[v].take()
            {
                self.free.push(r);
            }
        }
    }
}

/// A literal's 32 bits, as the machine's lanes hold them.
fn literal(s: Scalar) -> f32 {
    match s {
        Scalar::F32(x) => x,
        Scalar::I32(x) => f32::from_bits(x as u32),
    }
}

/// The literal of `dtype` whose bits are `bits`.
fn scalar(bits: f32, dtype: DType) -> Scalar {
    match dtype {
        DType::I32 => Scalar::I32(bits.to_bits() as i32),
        _ => Scalar::F32(bits),
    }
}

impl Machine {
    /// The machine for `expr` over `operands` when the CPU has AVX2 or
    /// AVX-512 (every dtype being f32 or i32). `expr` was checked by the
    /// chunk compiler.
    pub(super) fn compile(
        expr: &FusedExpr,
        operands: &[Bound<'_>],
        isa: Isa,
    ) -> KResult<Option<Machine>> {
        if isa == Isa::Base
            || expr
                .dtypes
                .iter()
                .any(|&d| !matches!(d, DType::F32 | DType::I32))
        {
            return Ok(None);
        }
        let dtypes = &expr.dtypes;
        let n = expr.instrs.len();
        let mut uses = vec![0usize; n];
        for instr in &expr.instrs {
            let (a, k) = args(instr);
            a[..k].iter().for_each(|&v| uses[v] += 1);
        }
        let mut b = Build {
            ops: Vec::new(),
            val: Vec::with_capacity(n),
            uses,
            stored: vec![None; n],
            acc: None,
            free: Vec::new(),
            regs: 0,
            operands: operands.len(),
        };
        for (i, instr) in expr.instrs.iter().enumerate() {
            let val = match *instr {
                Instr::Scalar(s) => Val::Splat(literal(s)),
                Instr::Input(k) => match operands.get(k) {
                    Some(Bound::F32(Operand::Splat(x))) => Val::Splat(*x),
                    Some(Bound::I32(Operand::Splat(x))) => Val::Splat(literal(Scalar::I32(*x))),
                    Some(_) => Val::Input(k),
                    None => return Err(format!("fused machine: no operand {k}")),
                },
                Instr::Cast(to, a) => match b.val[a] {
                    Val::Splat(x) => Val::Splat(literal(cast_scalar(scalar(x, dtypes[a]), to))),
                    _ => {
                        b.spill(instr);
                        b.cast(a, dtypes[a], to)?;
                        Val::Computed
                    }
                },
                Instr::Unary(op, a) => match b.val[a] {
                    Val::Splat(x) => Val::Splat(literal(fold_unary(op, scalar(x, dtypes[a])))),
                    _ => {
                        b.spill(instr);
                        b.unary(op, a, dtypes[a])?;
                        Val::Computed
                    }
                },
                Instr::Binary(op, x, y) => match (b.val[x], b.val[y]) {
                    (Val::Splat(p), Val::Splat(q)) => Val::Splat(literal(fold_binary(
                        op,
                        scalar(p, dtypes[x]),
                        scalar(q, dtypes[y]),
                    )?)),
                    _ => {
                        b.spill(instr);
                        b.binary(op, x, y, dtypes[x])?;
                        Val::Computed
                    }
                },
            };
            if matches!(val, Val::Computed) {
                b.acc = Some(i);
            }
            b.val.push(val);
            b.consumed(instr);
        }
        // A result no op computed (a literal, an operand) is loaded.
        match b.val.last() {
            Some(Val::Computed) => {}
            Some(&Val::Splat(x)) => b.ops.push(Op::LoadK(x)),
            Some(&Val::Input(k)) => b.ops.push(Op::LoadM(k as u32)),
            None => return Err("fused machine: empty program".into()),
        }
        if u32::try_from(b.operands + b.regs).is_err() {
            return Err("fused machine: too many operands and registers".into());
        }
        let mut reads: Vec<usize> = b
            .val
            .iter()
            .filter_map(|v| match v {
                Val::Input(k) => Some(*k),
                _ => None,
            })
            .collect();
        reads.sort_unstable();
        reads.dedup();
        Ok(Some(Machine {
            ops: b.ops,
            out: *dtypes.last().ok_or("fused machine: empty program")?,
            operands: b.operands,
            regs: b.regs,
            reads,
        }))
    }

    /// The dtype of the result the machine writes.
    pub(super) fn out(&self) -> DType {
        self.out
    }

    /// Whether the ops read only operands in `reads` and registers, and
    /// write only registers: what `block` relies on for its unchecked
    /// slot reads and writes.
    fn slots_valid(&self) -> bool {
        let total = self.operands + self.regs;
        let read = |s: &Src| match *s {
            Src::Slot(k) => {
                let k = k as usize;
                k < total && (k >= self.operands || self.reads.contains(&k))
            }
            Src::Splat(_) => true,
            // `slots` names the accumulator nowhere: only `Lanes2` could, and
            // the compiler stores it to a register first.
            Src::Acc => false,
        };
        let write = |k: u32| (self.operands..total).contains(&(k as usize));
        self.ops.iter().all(|op| {
            let (r, w) = op.slots();
            r.iter().flatten().all(read) && w.is_none_or(write)
        })
    }

    /// Runs the program over `out`, elements `start..start + out.len()` of
    /// the output (row-major over `dims`), with `isa`'s vectors, full
    /// blocks written with streaming stores when `stream` (and the program
    /// does not read the output in place, whose lines are then in cache).
    pub(super) fn run(
        &self,
        isa: Isa,
        operands: &[Bound<'_>],
        dims: &[usize],
        start: usize,
        out: &mut [f32],
        stream: bool,
    ) -> KResult<()> {
        let ops: Vec<Operand<'_, f32>> = operands.iter().map(lanes_of).collect();
        if isa > Isa::best() {
            return Err(format!("fused machine: this CPU has no {isa:?}"));
        }
        let end = start + out.len();
        if end > dims.iter().product::<usize>() {
            return Err(format!("fused machine: elements up to {end} of {dims:?}"));
        }
        // The operands must be those it was compiled for: a literal was
        // folded in, and an operand read per block must not be one.
        if ops.len() != self.operands {
            return Err(format!(
                "fused machine: {} operands, compiled for {}",
                ops.len(),
                self.operands
            ));
        }
        for &k in &self.reads {
            match ops[k] {
                Operand::Contig(s) if s.len() < end => {
                    return Err(format!(
                        "fused machine: operand {k} has {} elements, not {end}",
                        s.len()
                    ));
                }
                Operand::Splat(_) => {
                    return Err(format!("fused machine: operand {k} is now one element"));
                }
                _ => {}
            }
        }
        if !self.slots_valid() {
            return Err("fused machine: an op reads or writes outside its slots".into());
        }
        let mut bufs = vec![[0.0f32; MAX_W]; ops.len()];
        let mut regs = vec![[0.0f32; MAX_W]; self.regs];
        // Operand slots are set per block; register slots stay put.
        let mut ptrs = vec![std::ptr::null_mut(); ops.len()];
        ptrs.extend(regs.iter_mut().map(|r| r.as_mut_ptr()));
        let stream = stream && !ops.iter().any(|o| matches!(o, Operand::Output));
        let mut block = Block {
            ops: &ops,
            dims,
            bufs: &mut bufs,
            ptrs,
        };
        match isa {
            // SAFETY: `Isa::best` (checked above) found every feature these
            // enable.
            Isa::Avx512 => unsafe { self.run_avx512(&mut block, start, out, stream) },
            // SAFETY: as above.
            Isa::Avx2 => unsafe { self.run_avx2(&mut block, start, out, stream) },
            Isa::Base => Err("fused machine: compiled for no vector set".into()),
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
    fn run_avx512(
        &self,
        block: &mut Block<'_, '_>,
        start: usize,
        out: &mut [f32],
        stream: bool,
    ) -> KResult<()> {
        // SAFETY: this function runs only where AVX-512 is available.
        unsafe { self.run_blocks::<Avx512>(block, start, out, stream) };
        Ok(())
    }

    #[target_feature(enable = "avx2,fma")]
    fn run_avx2(
        &self,
        block: &mut Block<'_, '_>,
        start: usize,
        out: &mut [f32],
        stream: bool,
    ) -> KResult<()> {
        // SAFETY: this function runs only where AVX2 is available.
        unsafe { self.run_blocks::<Avx2>(block, start, out, stream) };
        Ok(())
    }

    /// Runs the blocks of `out`; with `stream`, full blocks are written
    /// with non-temporal stores (no read of the output's lines before
    /// writing them, no eviction of what the caches hold), after a short
    /// first block that brings the rest onto the vectors' alignment.
    ///
    /// # Safety
    /// The CPU has `S`'s vector set; `run`'s checks passed.
    #[inline(always)]
    unsafe fn run_blocks<S: Simd>(
        &self,
        b: &mut Block<'_, '_>,
        start: usize,
        out: &mut [f32],
        stream: bool,
    ) {
        let head = if stream {
            out.as_ptr().align_offset(S::ALIGN).min(out.len())
        } else {
            0
        };
        let (first, rest) = out.split_at_mut(head);
        // SAFETY: as the caller guarantees.
        unsafe {
            self.blocks::<S>(b, start, first, false);
            self.blocks::<S>(b, start + head, rest, stream);
            if stream {
                // Streaming stores are weakly ordered: make them visible
                // before anyone reads the output.
                _mm_sfence();
            }
        }
    }

    /// # Safety
    /// The CPU has `S`'s vector set; `run`'s checks passed; with `stream`,
    /// `out` starts on a multiple of `S::ALIGN` bytes.
    #[inline(always)]
    unsafe fn blocks<S: Simd>(
        &self,
        b: &mut Block<'_, '_>,
        start: usize,
        out: &mut [f32],
        stream: bool,
    ) {
        let w = 8 * S::LANES;
        for (i, o) in out.chunks_mut(w).enumerate() {
            let base = start + i * w;
            let len = o.len();
            let tail = len < w;
            // Each operand's elements of the block: read in place when
            // row-major and whole, else gathered into its buffer.
            for &k in &self.reads {
                let buf = &mut b.bufs[k];
                b.ptrs[k] = match &b.ops[k] {
                    Operand::Contig(s) if !tail => s[base..base + w].as_ptr().cast_mut(),
                    Operand::Contig(s) => {
                        buf[..len].copy_from_slice(&s[base..base + len]);
                        buf.as_mut_ptr()
                    }
                    Operand::Strided { data, strides } => {
                        gather(data, strides, b.dims, base, &mut buf[..len]);
                        buf.as_mut_ptr()
                    }
                    Operand::Output => {
                        buf[..len].copy_from_slice(o);
                        buf.as_mut_ptr()
                    }
                    // `run` rejected these.
                    Operand::Splat(_) => std::ptr::null_mut(),
                };
            }
            // SAFETY: the caller has `S`'s features; every slot the ops
            // read holds `w` elements (`run` checked the ops' slots and
            // the operands' lengths).
            let acc = unsafe { self.block::<S>(&b.ptrs) };
            if tail {
                let mut last = [0.0f32; MAX_W];
                // SAFETY: `last` holds `w <= MAX_W` elements.
                unsafe { store::<S>(acc, last.as_mut_ptr()) };
                o.copy_from_slice(&last[..len]);
            } else {
                // SAFETY: a full block: `o` holds `w` elements, and with
                // `stream` starts aligned (`w * 4` is a multiple of ALIGN).
                unsafe {
                    if stream {
                        stream_store::<S>(acc, o.as_mut_ptr());
                    } else {
                        store::<S>(acc, o.as_mut_ptr());
                    }
                }
            }
        }
    }

    /// One block's result.
    ///
    /// # Safety
    /// The CPU has `S`'s vector set; every slot of `ptrs` an op reads or
    /// writes points at `8 * S::LANES` elements, and written slots are
    /// block registers no other slot aliases.
    #[inline(always)]
    unsafe fn block<S: Simd>(&self, ptrs: &[*mut f32]) -> Acc<S::V> {
        let w = 8 * S::LANES;
        // Operands are read through `at`, `with_k` and `with_m`,
        // `#[inline(always)]` functions: a closure doing their work, called
        // from every arm, was not inlined, and cost a call per op with the
        // accumulator spilled around it.
        // SAFETY (all below): as the caller guarantees.
        unsafe {
            let mut acc = splat::<S>(0.0);
            for op in &self.ops {
                acc = match *op {
                    Op::LoadK(x) => splat::<S>(x),
                    Op::LoadM(k) => load::<S>(at(ptrs, k)),
                    Op::Store(k) => {
                        store::<S>(acc, at(ptrs, k));
                        acc
                    }
                    Op::Neg => map(acc, |v| S::neg(v)),
                    Op::Abs => map(acc, |v| S::abs(v)),
                    Op::Relu => map(acc, |v| S::relu(v)),
                    Op::Sqrt => map(acc, |v| S::sqrt(v)),
                    Op::AddK(x) => with_k::<S>(acc, x, |a, b| S::add(a, b)),
                    Op::AddM(k) => with_m::<S>(acc, ptrs, k, |a, b| S::add(a, b)),
                    Op::AddA => map(acc, |a| S::add(a, a)),
                    Op::SubK(x) => with_k::<S>(acc, x, |a, b| S::sub(a, b)),
                    Op::SubM(k) => with_m::<S>(acc, ptrs, k, |a, b| S::sub(a, b)),
                    Op::SubA => map(acc, |a| S::sub(a, a)),
                    Op::SubRevK(x) => with_k::<S>(acc, x, |a, b| S::sub(b, a)),
                    Op::SubRevM(k) => with_m::<S>(acc, ptrs, k, |a, b| S::sub(b, a)),
                    Op::MulK(x) => with_k::<S>(acc, x, |a, b| S::mul(a, b)),
                    Op::MulM(k) => with_m::<S>(acc, ptrs, k, |a, b| S::mul(a, b)),
                    Op::MulA => map(acc, |a| S::mul(a, a)),
                    Op::DivK(x) => with_k::<S>(acc, x, |a, b| S::div(a, b)),
                    Op::DivM(k) => with_m::<S>(acc, ptrs, k, |a, b| S::div(a, b)),
                    Op::DivA => map(acc, |a| S::div(a, a)),
                    Op::DivRevK(x) => with_k::<S>(acc, x, |a, b| S::div(b, a)),
                    Op::DivRevM(k) => with_m::<S>(acc, ptrs, k, |a, b| S::div(b, a)),
                    Op::MaxK(x) => with_k::<S>(acc, x, |a, b| S::max2(a, b)),
                    Op::MaxM(k) => with_m::<S>(acc, ptrs, k, |a, b| S::max2(a, b)),
                    Op::MaxA => map(acc, |a| S::max2(a, a)),
                    Op::MaxRevK(x) => with_k::<S>(acc, x, |a, b| S::max2(b, a)),
                    Op::MaxRevM(k) => with_m::<S>(acc, ptrs, k, |a, b| S::max2(b, a)),
                    Op::MinK(x) => with_k::<S>(acc, x, |a, b| S::min2(a, b)),
                    Op::MinM(k) => with_m::<S>(acc, ptrs, k, |a, b| S::min2(a, b)),
                    Op::MinA => map(acc, |a| S::min2(a, a)),
                    Op::MinRevK(x) => with_k::<S>(acc, x, |a, b| S::min2(b, a)),
                    Op::MinRevM(k) => with_m::<S>(acc, ptrs, k, |a, b| S::min2(b, a)),
                    Op::Lanes { op, slot } => {
                        lanes(op, at(ptrs, slot), w);
                        acc
                    }
                    Op::IAddK(x) => with_k::<S>(acc, x, |a, b| S::iadd(a, b)),
                    Op::IAddM(k) => with_m::<S>(acc, ptrs, k, |a, b| S::iadd(a, b)),
                    Op::IAddA => map(acc, |a| S::iadd(a, a)),
                    Op::ISubK(x) => with_k::<S>(acc, x, |a, b| S::isub(a, b)),
                    Op::ISubM(k) => with_m::<S>(acc, ptrs, k, |a, b| S::isub(a, b)),
                    Op::ISubA => map(acc, |a| S::isub(a, a)),
                    Op::ISubRevK(x) => with_k::<S>(acc, x, |a, b| S::isub(b, a)),
                    Op::ISubRevM(k) => with_m::<S>(acc, ptrs, k, |a, b| S::isub(b, a)),
                    Op::IMulK(x) => with_k::<S>(acc, x, |a, b| S::imul(a, b)),
                    Op::IMulM(k) => with_m::<S>(acc, ptrs, k, |a, b| S::imul(a, b)),
                    Op::IMulA => map(acc, |a| S::imul(a, a)),
                    Op::IMaxK(x) => with_k::<S>(acc, x, |a, b| S::imax(a, b)),
                    Op::IMaxM(k) => with_m::<S>(acc, ptrs, k, |a, b| S::imax(a, b)),
                    Op::IMinK(x) => with_k::<S>(acc, x, |a, b| S::imin(a, b)),
                    Op::IMinM(k) => with_m::<S>(acc, ptrs, k, |a, b| S::imin(a, b)),
                    Op::INeg => map(acc, |v| S::isub(S::splat(0.0), v)),
                    Op::IAbs => map(acc, |v| S::iabs(v)),
                    Op::IRelu => map(acc, |v| S::imax(v, S::splat(0.0))),
                    Op::F32ToI32 => map(acc, |v| S::f32_to_i32(v)),
                    Op::I32ToF32 => map(acc, |v| S::i32_to_f32(v)),
                    Op::Lanes2 {
                        op,
                        dtype,
                        a,
                        b,
                        out,
                    } => {
                        let (a, b) = (lane_src(a, ptrs), lane_src(b, ptrs));
                        binary_lanes(op, dtype, a, b, at(ptrs, out), w);
                        acc
                    }
                };
            }
            acc
        }
    }
}

/// Slot `k`'s pointer.
///
/// # Safety
/// `k` is within `ptrs`.
#[inline(always)]
unsafe fn at(ptrs: &[*mut f32], k: u32) -> *mut f32 {
    // SAFETY: as the caller guarantees.
    unsafe { *ptrs.get_unchecked(k as usize) }
}

/// `f(acc, x)` per vector, `x` a literal.
///
/// # Safety
/// The CPU has `S`'s vector set.
#[inline(always)]
unsafe fn with_k<S: Simd>(acc: Acc<S::V>, x: f32, f: impl Fn(S::V, S::V) -> S::V) -> Acc<S::V> {
    // SAFETY: as the caller guarantees.
    let x = unsafe { S::splat(x) };
    map(acc, |a| f(a, x))
}

/// `f(acc, m)` per vector, `m` slot `k`'s elements of the block.
///
/// # Safety
/// The CPU has `S`'s vector set; slot `k` is within `ptrs` and points at
/// `8 * S::LANES` elements.
#[inline(always)]
unsafe fn with_m<S: Simd>(
    acc: Acc<S::V>,
    ptrs: &[*mut f32],
    k: u32,
    f: impl Fn(S::V, S::V) -> S::V,
) -> Acc<S::V> {
    // SAFETY: as the caller guarantees.
    let m = unsafe { load::<S>(at(ptrs, k)) };
    zip(acc, m, f)
}

/// An operand's 32-bit lanes as the machine reads them: f32 operands as
/// they are, i32 ones as f32 views of the same bits.
fn lanes_of<'a>(b: &Bound<'a>) -> Operand<'a, f32> {
    fn view<'a, T: Copy>(
        o: &Operand<'a, T>,
        bits: impl Fn(&'a [T]) -> &'a [f32],
        one: impl Fn(T) -> f32,
    ) -> Operand<'a, f32> {
        match o {
            Operand::Splat(x) => Operand::Splat(one(*x)),
            Operand::Contig(s) => Operand::Contig(bits(s)),
            Operand::Strided { data, strides } => Operand::Strided {
                data: bits(data),
                strides: strides.clone(),
            },
            Operand::Output => Operand::Output,
        }
    }
    match b {
        Bound::F32(o) => view(o, |s| s, |x| x),
        Bound::I32(o) => view(o, bytemuck::cast_slice, |x| f32::from_bits(x as u32)),
    }
}

/// What a block reads: the operands, their per-block buffers, and the
/// pointer table the ops address by slot: operand `k`'s elements of the
/// block at slot `k` (set per block), the block registers after them.
struct Block<'b, 'a> {
    ops: &'b [Operand<'a, f32>],
    dims: &'b [usize],
    bufs: &'b mut [[f32; MAX_W]],
    ptrs: Vec<*mut f32>,
}

/// A lane-by-lane op's operand: a literal or a block's elements.
#[derive(Clone, Copy)]
enum LaneSrc {
    Splat(f32),
    At(*const f32),
}

impl LaneSrc {
    /// Element `i`.
    ///
    /// # Safety
    /// An `At` pointer has more than `i` elements.
    #[inline(always)]
    unsafe fn get(self, i: usize) -> f32 {
        match self {
            LaneSrc::Splat(x) => x,
            // SAFETY: as the caller guarantees.
            LaneSrc::At(p) => unsafe { *p.add(i) },
        }
    }
}

/// `s` for a lane-by-lane op (never the accumulator: the compiler stores
/// it first).
///
/// # Safety
/// A slot is within `ptrs`.
#[inline(always)]
unsafe fn lane_src(s: Src, ptrs: &[*mut f32]) -> LaneSrc {
    match s {
        Src::Splat(x) => LaneSrc::Splat(x),
        // SAFETY: as the caller guarantees.
        Src::Slot(k) => LaneSrc::At(unsafe { at(ptrs, k) }),
        Src::Acc => LaneSrc::Splat(f32::NAN),
    }
}

/// `p[..n] = op(p[..n])` lane by lane, with the chunk program's scalar
/// functions. Out of line: the hot loop keeps its registers.
///
/// # Safety
/// `p` is valid for reads and writes of `n` elements.
#[inline(never)]
unsafe fn lanes(op: UnaryOp, p: *mut f32, n: usize) {
    // SAFETY: as the caller guarantees; nothing else reads or writes
    // those elements meanwhile.
    let v = unsafe { std::slice::from_raw_parts_mut(p, n) };
    v.iter_mut()
        .for_each(|x| *x = super::chunk::unary_scalar(op, *x));
}

/// `out[i] = a[i] op b[i]` for `i < n`, in `dtype` (the lanes' bits are
/// i32 ones for i32), with [`Element`]'s functions.
///
/// # Safety
/// `a` and `b` (when pointers) are readable and `out` writable for `n`
/// elements; `out` may be `a` or `b`.
#[inline(never)]
unsafe fn binary_lanes(
    op: BinaryOp,
    dtype: DType,
    a: LaneSrc,
    b: LaneSrc,
    out: *mut f32,
    n: usize,
) {
    let int = |x: f32| x.to_bits() as i32;
    let bits = |x: i32| f32::from_bits(x as u32);
    for i in 0..n {
        // SAFETY: as the caller guarantees; element `i` is read before
        // it is written.
        unsafe {
            let (x, y) = (a.get(i), b.get(i));
            *out.add(i) = match (dtype, op) {
                (DType::I32, BinaryOp::Div) => bits(Element::div(int(x), int(y))),
                (DType::I32, _) => bits(Element::pow(int(x), int(y))),
                (_, BinaryOp::Div) => Element::div(x, y),
                _ => Element::pow(x, y),
            };
        }
    }
}

/// The accumulator: eight vectors.
#[derive(Clone, Copy)]
struct Acc<V>(V, V, V, V, V, V, V, V);

/// One x86 vector set's operations on 32-bit lanes, each with [`Element`]'s exact
/// semantics for f32 (and i32, for the integer ops).
trait Simd {
    type V: Copy;
    const LANES: usize;
    /// # Safety
    /// For all methods: the CPU has this vector set; pointers are valid
    /// for `LANES` elements.
    unsafe fn splat(x: f32) -> Self::V;
    unsafe fn load(p: *const f32) -> Self::V;
    unsafe fn store(p: *mut f32, v: Self::V);
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn sub(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn div(a: Self::V, b: Self::V) -> Self::V;
    /// `a >= b ? a : b`, NaN when either is NaN.
    unsafe fn max2(a: Self::V, b: Self::V) -> Self::V;
    /// `a <= b ? a : b`, NaN when either is NaN.
    unsafe fn min2(a: Self::V, b: Self::V) -> Self::V;
    /// `x < 0 ? 0 : x` (NaN stays NaN).
    unsafe fn relu(x: Self::V) -> Self::V;
    /// Clears the sign bit.
    unsafe fn abs(x: Self::V) -> Self::V;
    /// Flips the sign bit.
    unsafe fn neg(x: Self::V) -> Self::V;
    unsafe fn sqrt(x: Self::V) -> Self::V;
    /// i32 lanes (the vector's bits): wrapping add, sub and mul, max,
    /// min and wrapping abs.
    unsafe fn iadd(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn isub(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn imul(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn imax(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn imin(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn iabs(a: Self::V) -> Self::V;
    /// f32 to i32 as Rust's `as`: truncating, saturating, NaN to 0.
    unsafe fn f32_to_i32(x: Self::V) -> Self::V;
    /// i32 to f32, rounding to nearest (the default rounding mode).
    unsafe fn i32_to_f32(x: Self::V) -> Self::V;
    /// Bytes a streaming store's address must be a multiple of.
    const ALIGN: usize;
    /// A non-temporal store; `p` is `ALIGN`-aligned.
    unsafe fn stream(p: *mut f32, v: Self::V);
}

#[derive(Clone, Copy)]
struct Avx512;

impl Simd for Avx512 {
    type V = __m512;
    const LANES: usize = 16;
    const ALIGN: usize = 64;
    #[inline(always)]
    unsafe fn stream(p: *mut f32, v: __m512) {
        // SAFETY: `p` is 64-byte aligned with room for 16 elements.
        unsafe { _mm512_stream_ps(p, v) }
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> __m512 {
        // SAFETY: the caller runs with this vector set.
        unsafe { _mm512_set1_ps(x) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m512 {
        // SAFETY: `p` has 16 elements.
        unsafe { _mm512_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m512) {
        // SAFETY: `p` has room for 16 elements.
        unsafe { _mm512_storeu_ps(p, v) }
    }
    #[inline(always)]
    unsafe fn add(a: __m512, b: __m512) -> __m512 {
        // SAFETY: the caller runs with this vector set.
        unsafe { _mm512_add_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn sub(a: __m512, b: __m512) -> __m512 {
        // SAFETY: the caller runs with this vector set.
        unsafe { _mm512_sub_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn mul(a: __m512, b: __m512) -> __m512 {
        // SAFETY: the caller runs with this vector set.
        unsafe { _mm512_mul_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn div(a: __m512, b: __m512) -> __m512 {
        // SAFETY: the caller runs with this vector set.
        unsafe { _mm512_div_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn max2(a: __m512, b: __m512) -> __m512 {
        // SAFETY: the caller runs with this vector set.
        unsafe {
            let pick = _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_GE_OQ>(a, b), b, a);
            let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(a, b);
            _mm512_mask_blend_ps(nan, pick, _mm512_set1_ps(f32::NAN))
        }
    }
    #[inline(always)]
    unsafe fn min2(a: __m512, b: __m512) -> __m512 {
        // SAFETY: the caller runs with this vector set.
        unsafe {
            let pick = _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_LE_OQ>(a, b), b, a);
            let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(a, b);
            _mm512_mask_blend_ps(nan, pick, _mm512_set1_ps(f32::NAN))
        }
    }
    #[inline(always)]
    unsafe fn relu(x: __m512) -> __m512 {
        // SAFETY: the caller runs with this vector set.
        unsafe {
            let zero = _mm512_setzero_ps();
            _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, zero), x, zero)
        }
    }
    #[inline(always)]
    unsafe fn abs(x: __m512) -> __m512 {
        // SAFETY: the caller runs with this vector set.
        unsafe {
            _mm512_castsi512_ps(_mm512_and_si512(
                _mm512_castps_si512(x),
                _mm512_set1_epi32(i32::MAX),
            ))
        }
    }
    #[inline(always)]
    unsafe fn neg(x: __m512) -> __m512 {
        // SAFETY: the caller runs with this vector set.
        unsafe {
            _mm512_castsi512_ps(_mm512_xor_si512(
                _mm512_castps_si512(x),
                _mm512_set1_epi32(i32::MIN),
            ))
        }
    }
    #[inline(always)]
    unsafe fn sqrt(x: __m512) -> __m512 {
        // SAFETY: the caller runs with this vector set.
        unsafe { _mm512_sqrt_ps(x) }
    }
    #[inline(always)]
    unsafe fn iadd(a: __m512, b: __m512) -> __m512 {
        // SAFETY: the caller runs with this vector set.
        unsafe { int512(a, b, |a, b| _mm512_add_epi32(a, b)) }
    }
    #[inline(always)]
    unsafe fn isub(a: __m512, b: __m512) -> __m512 {
        // SAFETY: the caller runs with this vector set.
        unsafe { int512(a, b, |a, b| _mm512_sub_epi32(a, b)) }
    }
    #[inline(always)]
    unsafe fn imul(a: __m512, b: __m512) -> __m512 {
        // SAFETY: the caller runs with this vector set.
        unsafe { int512(a, b, |a, b| _mm512_mullo_epi32(a, b)) }
    }
    #[inline(always)]
    unsafe fn imax(a: __m512, b: __m512) -> __m512 {
        // SAFETY: the caller runs with this vector set.
        unsafe { int512(a, b, |a, b| _mm512_max_epi32(a, b)) }
    }
    #[inline(always)]
    unsafe fn imin(a: __m512, b: __m512) -> __m512 {
        // SAFETY: the caller runs with this vector set.
        unsafe { int512(a, b, |a, b| _mm512_min_epi32(a, b)) }
    }
    #[inline(always)]
    unsafe fn iabs(a: __m512) -> __m512 {
        // SAFETY: the caller runs with this vector set.
        unsafe { _mm512_castsi512_ps(_mm512_abs_epi32(_mm512_castps_si512(a))) }
    }
    #[inline(always)]
    unsafe fn f32_to_i32(x: __m512) -> __m512 {
        // SAFETY: the caller runs with this vector set.
        unsafe {
            // Truncation gives i32::MIN for NaN and out of range: NaN goes
            // to 0, and too large to i32::MAX (too small is i32::MIN).
            let t = _mm512_cvttps_epi32(x);
            let big = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(x, _mm512_set1_ps(2_147_483_648.0));
            let t = _mm512_mask_mov_epi32(t, big, _mm512_set1_epi32(i32::MAX));
            let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x);
            _mm512_castsi512_ps(_mm512_maskz_mov_epi32(!nan, t))
        }
    }
    #[inline(always)]
    unsafe fn i32_to_f32(x: __m512) -> __m512 {
        // SAFETY: the caller runs with this vector set.
        unsafe { _mm512_cvtepi32_ps(_mm512_castps_si512(x)) }
    }
}

/// `f` on the i32 lanes of two f32 vectors' bits.
#[inline(always)]
unsafe fn int512(a: __m512, b: __m512, f: impl Fn(__m512i, __m512i) -> __m512i) -> __m512 {
    // SAFETY: the casts only reinterpret bits (the caller runs with
    // AVX-512).
    unsafe { _mm512_castsi512_ps(f(_mm512_castps_si512(a), _mm512_castps_si512(b))) }
}

#[derive(Clone, Copy)]
struct Avx2;

impl Simd for Avx2 {
    type V = __m256;
    const LANES: usize = 8;
    const ALIGN: usize = 32;
    #[inline(always)]
    unsafe fn stream(p: *mut f32, v: __m256) {
        // SAFETY: `p` is 32-byte aligned with room for 8 elements.
        unsafe { _mm256_stream_ps(p, v) }
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> __m256 {
        // SAFETY: the caller runs with this vector set.
        unsafe { _mm256_set1_ps(x) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m256 {
        // SAFETY: `p` has 8 elements.
        unsafe { _mm256_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m256) {
        // SAFETY: `p` has room for 8 elements.
        unsafe { _mm256_storeu_ps(p, v) }
    }
    #[inline(always)]
    unsafe fn add(a: __m256, b: __m256) -> __m256 {
        // SAFETY: the caller runs with this vector set.
        unsafe { _mm256_add_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn sub(a: __m256, b: __m256) -> __m256 {
        // SAFETY: the caller runs with this vector set.
        unsafe { _mm256_sub_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn mul(a: __m256, b: __m256) -> __m256 {
        // SAFETY: the caller runs with this vector set.
        unsafe { _mm256_mul_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn div(a: __m256, b: __m256) -> __m256 {
        // SAFETY: the caller runs with this vector set.
        unsafe { _mm256_div_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn max2(a: __m256, b: __m256) -> __m256 {
        // SAFETY: the caller runs with this vector set.
        unsafe {
            // blendv takes the second operand where the mask is set.
            let pick = _mm256_blendv_ps(b, a, _mm256_cmp_ps::<_CMP_GE_OQ>(a, b));
            let nan = _mm256_cmp_ps::<_CMP_UNORD_Q>(a, b);
            _mm256_blendv_ps(pick, _mm256_set1_ps(f32::NAN), nan)
        }
    }
    #[inline(always)]
    unsafe fn min2(a: __m256, b: __m256) -> __m256 {
        // SAFETY: the caller runs with this vector set.
        unsafe {
            let pick = _mm256_blendv_ps(b, a, _mm256_cmp_ps::<_CMP_LE_OQ>(a, b));
            let nan = _mm256_cmp_ps::<_CMP_UNORD_Q>(a, b);
            _mm256_blendv_ps(pick, _mm256_set1_ps(f32::NAN), nan)
        }
    }
    #[inline(always)]
    unsafe fn relu(x: __m256) -> __m256 {
        // SAFETY: the caller runs with this vector set.
        unsafe {
            let zero = _mm256_setzero_ps();
            _mm256_blendv_ps(x, zero, _mm256_cmp_ps::<_CMP_LT_OQ>(x, zero))
        }
    }
    #[inline(always)]
    unsafe fn abs(x: __m256) -> __m256 {
        // SAFETY: the caller runs with this vector set.
        unsafe { _mm256_and_ps(x, _mm256_castsi256_ps(_mm256_set1_epi32(i32::MAX))) }
    }
    #[inline(always)]
    unsafe fn neg(x: __m256) -> __m256 {
        // SAFETY: the caller runs with this vector set.
        unsafe { _mm256_xor_ps(x, _mm256_castsi256_ps(_mm256_set1_epi32(i32::MIN))) }
    }
    #[inline(always)]
    unsafe fn sqrt(x: __m256) -> __m256 {
        // SAFETY: the caller runs with this vector set.
        unsafe { _mm256_sqrt_ps(x) }
    }
    #[inline(always)]
    unsafe fn iadd(a: __m256, b: __m256) -> __m256 {
        // SAFETY: the caller runs with this vector set.
        unsafe { int256(a, b, |a, b| _mm256_add_epi32(a, b)) }
    }
    #[inline(always)]
    unsafe fn isub(a: __m256, b: __m256) -> __m256 {
        // SAFETY: the caller runs with this vector set.
        unsafe { int256(a, b, |a, b| _mm256_sub_epi32(a, b)) }
    }
    #[inline(always)]
    unsafe fn imul(a: __m256, b: __m256) -> __m256 {
        // SAFETY: the caller runs with this vector set.
        unsafe { int256(a, b, |a, b| _mm256_mullo_epi32(a, b)) }
    }
    #[inline(always)]
    unsafe fn imax(a: __m256, b: __m256) -> __m256 {
        // SAFETY: the caller runs with this vector set.
        unsafe { int256(a, b, |a, b| _mm256_max_epi32(a, b)) }
    }
    #[inline(always)]
    unsafe fn imin(a: __m256, b: __m256) -> __m256 {
        // SAFETY: the caller runs with this vector set.
        unsafe { int256(a, b, |a, b| _mm256_min_epi32(a, b)) }
    }
    #[inline(always)]
    unsafe fn iabs(a: __m256) -> __m256 {
        // SAFETY: the caller runs with this vector set.
        unsafe { _mm256_castsi256_ps(_mm256_abs_epi32(_mm256_castps_si256(a))) }
    }
    #[inline(always)]
    unsafe fn f32_to_i32(x: __m256) -> __m256 {
        // SAFETY: the caller runs with this vector set.
        unsafe {
            // As the AVX-512 form: NaN to 0, too large to i32::MAX.
            let t = _mm256_castsi256_ps(_mm256_cvttps_epi32(x));
            let big = _mm256_cmp_ps::<_CMP_GE_OQ>(x, _mm256_set1_ps(2_147_483_648.0));
            let t = _mm256_blendv_ps(t, _mm256_castsi256_ps(_mm256_set1_epi32(i32::MAX)), big);
            let ordered = _mm256_cmp_ps::<_CMP_ORD_Q>(x, x);
            _mm256_and_ps(t, ordered)
        }
    }
    #[inline(always)]
    unsafe fn i32_to_f32(x: __m256) -> __m256 {
        // SAFETY: the caller runs with this vector set.
        unsafe { _mm256_cvtepi32_ps(_mm256_castps_si256(x)) }
    }
}

/// `f` on the i32 lanes of two f32 vectors' bits.
#[inline(always)]
unsafe fn int256(a: __m256, b: __m256, f: impl Fn(__m256i, __m256i) -> __m256i) -> __m256 {
    // SAFETY: the casts only reinterpret bits (the caller runs with AVX2).
    unsafe { _mm256_castsi256_ps(f(_mm256_castps_si256(a), _mm256_castps_si256(b))) }
}

/// # Safety
/// The CPU has `S`'s vector set.
#[inline(always)]
unsafe fn splat<S: Simd>(x: f32) -> Acc<S::V> {
    // SAFETY: as the caller guarantees.
    let v = unsafe { S::splat(x) };
    Acc(v, v, v, v, v, v, v, v)
}

/// # Safety
/// The CPU has `S`'s vector set; `p` has `8 * S::LANES` elements.
#[inline(always)]
unsafe fn load<S: Simd>(p: *const f32) -> Acc<S::V> {
    let l = S::LANES;
    // SAFETY: as the caller guarantees.
    unsafe {
        Acc(
            S::load(p),
            S::load(p.add(l)),
            S::load(p.add(2 * l)),
            S::load(p.add(3 * l)),
            S::load(p.add(4 * l)),
            S::load(p.add(5 * l)),
            S::load(p.add(6 * l)),
            S::load(p.add(7 * l)),
        )
    }
}

/// # Safety
/// The CPU has `S`'s vector set; `p` has room for `8 * S::LANES` elements.
#[inline(always)]
unsafe fn store<S: Simd>(a: Acc<S::V>, p: *mut f32) {
    let l = S::LANES;
    // SAFETY: as the caller guarantees.
    unsafe {
        S::store(p, a.0);
        S::store(p.add(l), a.1);
        S::store(p.add(2 * l), a.2);
        S::store(p.add(3 * l), a.3);
        S::store(p.add(4 * l), a.4);
        S::store(p.add(5 * l), a.5);
        S::store(p.add(6 * l), a.6);
        S::store(p.add(7 * l), a.7);
    }
}

/// [`store`] with non-temporal stores.
///
/// # Safety
/// The CPU has `S`'s vector set; `p` is `S::ALIGN`-aligned with room for
/// `8 * S::LANES` elements.
#[inline(always)]
unsafe fn stream_store<S: Simd>(a: Acc<S::V>, p: *mut f32) {
    let l = S::LANES;
    // SAFETY: as the caller guarantees; each vector's address stays
    // aligned (`l * 4` is a multiple of ALIGN).
    unsafe {
        S::stream(p, a.0);
        S::stream(p.add(l), a.1);
        S::stream(p.add(2 * l), a.2);
        S::stream(p.add(3 * l), a.3);
        S::stream(p.add(4 * l), a.4);
        S::stream(p.add(5 * l), a.5);
        S::stream(p.add(6 * l), a.6);
        S::stream(p.add(7 * l), a.7);
    }
}

/// Applies `f` to each of the eight vectors.
#[inline(always)]
fn map<V: Copy>(a: Acc<V>, f: impl Fn(V) -> V) -> Acc<V> {
    Acc(
        f(a.0),
        f(a.1),
        f(a.2),
        f(a.3),
        f(a.4),
        f(a.5),
        f(a.6),
        f(a.7),
    )
}

/// Applies `f` to each pair of vectors.
#[inline(always)]
fn zip<V: Copy>(a: Acc<V>, b: Acc<V>, f: impl Fn(V, V) -> V) -> Acc<V> {
    Acc(
        f(a.0, b.0),
        f(a.1, b.1),
        f(a.2, b.2),
        f(a.3, b.3),
        f(a.4, b.4),
        f(a.5, b.5),
        f(a.6, b.6),
        f(a.7, b.7),
    )
}

#[cfg(test)]
mod tests {
    use ndarray::{ArrayD, IxDyn};
    use tensorgraph_core::{DType, FusedExpr, Instr, TensorType, Value};

    use super::super::chunk::Lane;
    use super::super::with_program;
    use super::*;
    use crate::element::KResult;

    /// Floats with NaN, infinities, signed zeros and negatives among them.
    fn floats(shape: &[usize], seed: u32) -> Value {
        let special = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0, 0.0, -1.0];
        let mut a = crate::test_data::xorshift_floats(shape, seed, 11, 2);
        for (i, x) in a.iter_mut().enumerate() {
            if let Some(&v) = special.get((i + 1) % 41) {
                *x = v;
            }
        }
        Value::F32(a)
    }

    fn expr(instrs: Vec<Instr>) -> FusedExpr {
        let dtypes = vec![DType::F32; instrs.len()];
        FusedExpr { instrs, dtypes }
    }

    /// The machine, on every vector set this CPU has, run whole and in
    /// uneven parts (short last blocks, starts off a block edge), gives the
    /// chunk program's bits.
    fn same_as_chunks(e: &FusedExpr, inputs: &[&Value], dims: &[usize]) {
        match e.dtypes.last() {
            Some(DType::I32) => same_bits::<i32>(e, inputs, dims),
            _ => same_bits::<f32>(e, inputs, dims),
        }
    }

    /// [`same_as_chunks`] for a result of type `R`.
    fn same_bits<R: Lane + Default + Clone>(e: &FusedExpr, inputs: &[&Value], dims: &[usize]) {
        let out = TensorType::new(R::DTYPE, dims.to_vec());
        let inputs: Vec<Option<&Value>> = inputs.iter().copied().map(Some).collect();
        let n: usize = dims.iter().product();
        // Bits; for an f32 result any NaN matches any NaN: which operand's
        // NaN an add of two NaNs returns depends on how the compiler
        // ordered the operands of a commutative op, in any build.
        let bits = |v: &mut [R]| -> Vec<u32> {
            R::bits(v)
                .iter()
                .map(|x| {
                    if R::DTYPE == DType::F32 && x.is_nan() {
                        u32::MAX
                    } else {
                        x.to_bits()
                    }
                })
                .collect()
        };
        let result: KResult<()> = with_program(e, &out, &inputs, |p| {
            let mut want = vec![R::default(); n];
            p.run_chunks(0, &mut want, &mut p.chunk_scratch())?;
            let want = bits(&mut want);
            for isa in Isa::available().into_iter().filter(|&i| i != Isa::Base) {
                let m = Machine::compile(e, &p.operands, isa)?.expect("a machine program");
                assert_eq!(m.out(), R::DTYPE);
                for (cut, stream) in [
                    (n, false),
                    (37, false),
                    (200, true),
                    (1000, true),
                    (n, true),
                ] {
                    let mut got = vec![R::default(); n];
                    for (i, part) in got.chunks_mut(cut.max(1)).enumerate() {
                        m.run(
                            isa,
                            &p.operands,
                            &p.code.dims,
                            i * cut,
                            R::bits(part),
                            stream,
                        )?;
                    }
                    assert_eq!(
                        bits(&mut got),
                        want,
                        "{isa:?}, parts of {cut}, streaming {stream}: {e}"
                    );
                }
            }
            Ok(())
        });
        result.expect("runs");
    }

    /// Every op alone, on operands with ties and signed-zero pairs, both
    /// ways round and against a literal.
    #[test]
    fn every_op_alone() {
        use Instr::*;
        let n = 300;
        let x = floats(&[n], 8);
        let y = match &x {
            Value::F32(a) => Value::F32(ArrayD::from_shape_fn(IxDyn(&[n]), |i| {
                let v = a[[i[0]]];
                match i[0] % 4 {
                    0 => v,              // a tie
                    1 if v == 0.0 => -v, // +0 against -0
                    2 => -v,
                    _ => v * 0.5 - 1.0,
                }
            })),
            v => v.clone(),
        };
        for op in UnaryOp::ALL {
            same_as_chunks(&expr(vec![Input(0), Unary(op, 0)]), &[&x], &[n]);
        }
        let lit = tensorgraph_core::Scalar::F32(-0.0);
        let one = tensorgraph_core::Scalar::F32(1.0);
        for op in BinaryOp::ALL {
            // Operands straight from memory, then with the accumulator on
            // either side (`y * 1` puts y there unchanged, -0 and ties
            // included): each operand kind of each op, both ways round.
            let acc_y = [Input(0), Input(1), Scalar(one), Binary(BinaryOp::Mul, 1, 2)];
            let with_acc = |tail: Instr| [&acc_y[..], &[Scalar(lit), tail]].concat();
            for e in [
                vec![Input(0), Input(1), Binary(op, 0, 1)],
                vec![Input(0), Input(1), Binary(op, 1, 0)],
                vec![Input(0), Scalar(lit), Binary(op, 1, 0)],
                vec![Input(0), Scalar(lit), Binary(op, 0, 1)],
                vec![Input(0), Binary(op, 0, 0)],
                with_acc(Binary(op, 0, 3)),
                with_acc(Binary(op, 3, 0)),
                with_acc(Binary(op, 4, 3)),
                with_acc(Binary(op, 3, 4)),
                with_acc(Binary(op, 3, 3)),
            ] {
                same_as_chunks(&expr(e), &[&x, &y], &[n]);
            }
        }
    }

    #[test]
    fn a_chain_with_reversed_operands_and_literals() {
        use BinaryOp::*;
        use Instr::*;
        let e = expr(vec![
            Input(0),
            Scalar(tensorgraph_core::Scalar::F32(1.5)),
            Binary(Mul, 0, 1),
            Scalar(tensorgraph_core::Scalar::F32(0.25)),
            Binary(Sub, 3, 2), // literal - acc: reversed
            Unary(UnaryOp::Relu, 4),
            Binary(Mul, 5, 0),
            Unary(UnaryOp::Abs, 6),
            Unary(UnaryOp::Sqrt, 7),
            Binary(Max, 8, 0),
            Binary(Min, 0, 9), // operand op acc: reversed
            Unary(UnaryOp::Neg, 10),
            Binary(Div, 11, 0),
        ]);
        for n in [1, 63, 64, 129, 5000] {
            same_as_chunks(&e, &[&floats(&[n], 1)], &[n]);
        }
    }

    #[test]
    fn values_read_again_later_are_kept_in_registers() {
        use BinaryOp::*;
        use Instr::*;
        // a = x*y; b = tanh(a); c = a + b; d = c * c; e = d - a;
        // f = e pow y; g = sigmoid(b); f + g
        let e = expr(vec![
            Input(0),
            Input(1),
            Binary(Mul, 0, 1),
            Unary(UnaryOp::Tanh, 2),
            Binary(Add, 2, 3),
            Binary(Mul, 4, 4),
            Binary(Sub, 5, 2),
            Binary(Pow, 6, 1),
            Unary(UnaryOp::Sigmoid, 3),
            Binary(Add, 7, 8),
        ]);
        let (x, y) = (floats(&[33, 70], 2), floats(&[33, 70], 3));
        same_as_chunks(&e, &[&x, &y], &[33, 70]);
    }

    #[test]
    fn ops_outside_their_slots_are_refused() {
        use Instr::*;
        // Operand 1 is bound but never read: its slot is never set.
        let e = expr(vec![
            Input(0),
            Unary(UnaryOp::Exp, 0),
            Binary(BinaryOp::Add, 1, 0),
        ]);
        let (x, y) = (floats(&[300], 6), floats(&[300], 7));
        let out = TensorType::new(DType::F32, vec![300]);
        let result: KResult<()> = with_program(&e, &out, &[Some(&x), Some(&y)], |p| {
            for isa in Isa::available().into_iter().filter(|&i| i != Isa::Base) {
                let good = Machine::compile(&e, &p.operands, isa)?.expect("an f32 program");
                let (n, past) = (good.operands as u32, (good.operands + good.regs) as u32);
                assert!(good.regs > 0, "exp goes through a block register");
                let mut got = vec![0.0f32; 300];
                good.run(isa, &p.operands, &p.code.dims, 0, &mut got, false)?;
                for bad in [
                    Op::Store(0),
                    Op::Lanes {
                        op: UnaryOp::Exp,
                        slot: 0,
                    },
                    Op::LoadM(1),
                    Op::AddM(past),
                    Op::Store(past),
                    Op::Lanes2 {
                        op: BinaryOp::Pow,
                        dtype: DType::F32,
                        a: Src::Acc,
                        b: Src::Splat(2.0),
                        out: n,
                    },
                    Op::Lanes2 {
                        op: BinaryOp::Pow,
                        dtype: DType::F32,
                        a: Src::Slot(0),
                        b: Src::Splat(2.0),
                        out: 0,
                    },
                ] {
                    let mut ops = good.ops.clone();
                    ops.push(bad);
                    let m = Machine {
                        ops,
                        out: good.out,
                        operands: good.operands,
                        regs: good.regs,
                        reads: good.reads.clone(),
                    };
                    let err = m
                        .run(isa, &p.operands, &p.code.dims, 0, &mut got, false)
                        .expect_err("refused");
                    assert!(err.contains("outside its slots"), "{bad:?}: {err}");
                }
            }
            Ok(())
        });
        result.expect("runs");
    }

    #[test]
    fn lane_by_lane_ops_on_the_accumulator() {
        use BinaryOp::*;
        use Instr::*;
        let lit = tensorgraph_core::Scalar::F32(1.5);
        for e in [
            // acc ^ acc, then acc ^ operand, operand ^ acc, literal ^ acc.
            vec![Input(0), Unary(UnaryOp::Neg, 0), Binary(Pow, 1, 1)],
            vec![
                Input(0),
                Input(1),
                Unary(UnaryOp::Abs, 0),
                Binary(Pow, 2, 1),
            ],
            vec![
                Input(0),
                Input(1),
                Unary(UnaryOp::Abs, 0),
                Binary(Pow, 1, 2),
            ],
            vec![
                Input(0),
                Scalar(lit),
                Unary(UnaryOp::Abs, 0),
                Binary(Pow, 1, 2),
            ],
            // A kept value and the accumulator both read around a
            // transcendental op and a pow.
            vec![
                Input(0),
                Unary(UnaryOp::Abs, 0),
                Unary(UnaryOp::Exp, 1),
                Binary(Pow, 2, 1),
                Unary(UnaryOp::Log, 3),
                Binary(Sub, 4, 1),
                Binary(Pow, 1, 5),
            ],
        ] {
            let (x, y) = (floats(&[517], 4), floats(&[517], 5));
            same_as_chunks(&expr(e), &[&x, &y], &[517]);
        }
    }

    #[test]
    fn broadcast_strided_and_splat_operands() {
        use BinaryOp::*;
        use Instr::*;
        let e = expr(vec![
            Input(0),
            Input(1),
            Input(2),
            Binary(Add, 0, 1),
            Binary(Mul, 3, 2),
            Unary(UnaryOp::Exp, 4),
            Unary(UnaryOp::Sin, 1),
            Binary(Sub, 5, 6),
        ]);
        let x = floats(&[17, 130], 4);
        let row = floats(&[130], 5);
        let one = floats(&[1, 1], 6);
        same_as_chunks(&e, &[&x, &row, &one], &[17, 130]);
        // A transposed operand is read through strides.
        let t = match floats(&[130, 17], 7) {
            Value::F32(a) => Value::F32(a.reversed_axes()),
            v => v,
        };
        same_as_chunks(&e, &[&x, &row, &t], &[17, 130]);
    }

    /// i32 operands with the values integer ops go wrong at, placed by
    /// `seed` so that two operands pair them up differently (MIN / -1,
    /// MAX + 1, MIN * -1, MAX against MIN).
    fn ints(shape: &[usize], seed: u32) -> Value {
        let special = [i32::MIN, -1, i32::MAX, 1, 0, i32::MIN + 1, 2, -2];
        let a = crate::test_data::xorshift_floats(shape, seed, 13, 1);
        let mut k = seed as usize;
        Value::I32(a.mapv(|x| {
            k += 1;
            special.get(k % 11).copied().unwrap_or(
                ((x * 3.0e4) as i32).wrapping_mul(if k.is_multiple_of(3) { 70_001 } else { 1 }),
            )
        }))
    }

    fn typed(instrs: Vec<Instr>, dtypes: Vec<DType>) -> FusedExpr {
        FusedExpr { instrs, dtypes }
    }

    #[test]
    fn every_i32_op_alone() {
        use DType::I32;
        use Instr::*;
        let n = 300;
        let (x, y) = (ints(&[n], 1), ints(&[n], 2));
        for op in [UnaryOp::Neg, UnaryOp::Abs, UnaryOp::Relu] {
            same_as_chunks(
                &typed(vec![Input(0), Unary(op, 0)], vec![I32; 2]),
                &[&x],
                &[n],
            );
        }
        let lit = tensorgraph_core::Scalar::I32(-3);
        let one = tensorgraph_core::Scalar::I32(1);
        for op in BinaryOp::ALL {
            let acc_y = [Input(0), Input(1), Scalar(one), Binary(BinaryOp::Mul, 1, 2)];
            let with_acc = |tail: Instr| [&acc_y[..], &[Scalar(lit), tail]].concat();
            for e in [
                vec![Input(0), Input(1), Binary(op, 0, 1)],
                vec![Input(0), Input(1), Binary(op, 1, 0)],
                vec![Input(0), Scalar(lit), Binary(op, 1, 0)],
                vec![Input(0), Scalar(lit), Binary(op, 0, 1)],
                vec![Input(0), Binary(op, 0, 0)],
                with_acc(Binary(op, 0, 3)),
                with_acc(Binary(op, 3, 0)),
                with_acc(Binary(op, 4, 3)),
                with_acc(Binary(op, 3, 4)),
                with_acc(Binary(op, 3, 3)),
            ] {
                let k = e.len();
                same_as_chunks(&typed(e, vec![I32; k]), &[&x, &y], &[n]);
            }
        }
    }

    #[test]
    fn i32_broadcast_strided_and_splat_operands() {
        use BinaryOp::*;
        use DType::I32;
        use Instr::*;
        let e = typed(
            vec![
                Input(0),
                Input(1),
                Input(2),
                Binary(Add, 0, 1),
                Binary(Mul, 3, 2),
                Binary(Div, 4, 1),
                Binary(Sub, 2, 5),
                Cast(I32, 6),
            ],
            vec![I32; 8],
        );
        let x = ints(&[17, 130], 4);
        let row = ints(&[130], 5);
        let one = ints(&[1, 1], 6);
        same_as_chunks(&e, &[&x, &row, &one], &[17, 130]);
        let t = match ints(&[130, 17], 7) {
            Value::I32(a) => Value::I32(a.reversed_axes()),
            v => v,
        };
        same_as_chunks(&e, &[&x, &row, &t], &[17, 130]);
    }

    #[test]
    fn casts_both_ways() {
        use DType::{F32, I32};
        use Instr::*;
        let n = 517;
        // Floats at the edges of i32: out of range both ways, the largest
        // f32 below 2^31, ties, NaN, infinities, negative zero.
        let edges = [
            2_147_483_648.0f32,
            2_147_483_520.0,
            -2_147_483_648.0,
            -2_147_483_904.0,
            1e10,
            -1e10,
            0.5,
            -0.5,
            1.5,
            -2.5,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            -0.0,
        ];
        let fx = match floats(&[n], 3) {
            Value::F32(mut a) => {
                a.iter_mut().enumerate().for_each(|(i, v)| {
                    *v = edges.get(i % 29).copied().unwrap_or(*v * 3.0e9);
                });
                Value::F32(a)
            }
            v => v,
        };
        // i32 values f32 cannot hold exactly: they round.
        let ix = match ints(&[n], 4) {
            Value::I32(mut a) => {
                a.iter_mut().enumerate().for_each(|(i, v)| {
                    if i % 5 == 0 {
                        *v = 16_777_217 + i as i32;
                    }
                });
                Value::I32(a)
            }
            v => v,
        };
        same_as_chunks(
            &typed(vec![Input(0), Cast(I32, 0)], vec![F32, I32]),
            &[&fx],
            &[n],
        );
        same_as_chunks(
            &typed(vec![Input(0), Cast(F32, 0)], vec![I32, F32]),
            &[&ix],
            &[n],
        );
        // A mixed chain: floats to ints, integer ops against an i32
        // operand, back to floats, float ops against an f32 operand.
        let e = typed(
            vec![
                Input(0),
                Scalar(tensorgraph_core::Scalar::F32(100.0)),
                Binary(BinaryOp::Mul, 0, 1),
                Cast(I32, 2),
                Input(1),
                Binary(BinaryOp::Sub, 3, 4),
                Scalar(tensorgraph_core::Scalar::I32(7)),
                Binary(BinaryOp::Div, 5, 6),
                Unary(UnaryOp::Abs, 7),
                Cast(F32, 8),
                Binary(BinaryOp::Max, 9, 0),
                Cast(F32, 9),
                Binary(BinaryOp::Sub, 10, 11),
            ],
            vec![
                F32, F32, F32, I32, I32, I32, I32, I32, I32, F32, F32, F32, F32,
            ],
        );
        same_as_chunks(&e, &[&fx, &ix], &[n]);
        // Literals of both types fold through casts.
        let folded = typed(
            vec![
                Scalar(tensorgraph_core::Scalar::F32(-7.9)),
                Cast(I32, 0),
                Input(0),
                Binary(BinaryOp::Mul, 1, 2),
            ],
            vec![F32, I32, I32, I32],
        );
        same_as_chunks(&folded, &[&ix], &[n]);
    }

    #[test]
    fn a_program_runs_only_into_its_own_dtype() {
        let neg = |d: DType| {
            typed(
                vec![Instr::Input(0), Instr::Unary(UnaryOp::Neg, 0)],
                vec![d; 2],
            )
        };
        let (iv, fv) = (ints(&[300], 5), floats(&[300], 5));
        for (e, v) in [(neg(DType::I32), &iv), (neg(DType::F32), &fv)] {
            let d = e.dtypes[0];
            let ty = TensorType::new(d, [300]);
            let result: KResult<()> = with_program(&e, &ty, &[Some(v)], |p| {
                // Where the machine runs it (a CPU with AVX2).
                if let Some(m) = &p.code.machine {
                    assert_eq!(m.out(), d);
                    let err = if d == DType::I32 {
                        p.run_part(0, &mut [0.0f32; 300], &mut p.chunk_scratch())
                    } else {
                        p.run_part(0, &mut [0i32; 300], &mut p.chunk_scratch())
                    };
                    assert!(err.is_err(), "a {d} program wrote the other dtype");
                }
                Ok(())
            });
            result.expect("runs");
        }
    }
}
