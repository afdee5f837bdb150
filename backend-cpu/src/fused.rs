//! The fused elementwise kernel: a [`FusedExpr`] evaluated over its
//! broadcast operands in one pass over memory.
//!
//! The output is cut into chunks small enough that every live intermediate
//! stays in L1. Each chunk runs the program instruction by instruction,
//! each instruction a plain loop over a slice (so it vectorises), its
//! result in a scratch register; the last instruction writes straight into
//! the output. Dispatch on the op happens once per instruction per chunk,
//! never per element. Large outputs split into rayon tasks of many chunks.
//!
//! Run in place ([`fused_into`]), the output is the array of an operand:
//! that operand's chunk is copied into a register where the program reads
//! it, always before the last step writes the chunk.

use std::sync::Arc;

use ndarray::{ArrayD, IxDyn};
use rayon::prelude::*;
use tensorgraph_core::{BinaryOp, DType, FusedExpr, Instr, Scalar, TensorType, UnaryOp, Value};

mod cache;
mod chunk;
mod donor;
#[cfg(target_arch = "x86_64")]
mod machine;
mod operand;
mod prologue;

use self::cache::Cache;
use self::chunk::{
    Isa, Lane, Out, Src, binary_on, cast_scalar, fold_binary, fold_unary, map1, unary_on,
};
pub(crate) use self::donor::fused_into;
use self::operand::{Bound, Operand, bind, gather, standard_copy};
pub(crate) use self::prologue::{Prologue, reduce_prologue};
use crate::element::{KResult, PAR_THRESHOLD};
use crate::pool::{Alloc, Pooled};

/// Elements per chunk: a few registers of this many elements fit in L1.
const CHUNK: usize = 2048;
/// Most elements per rayon task (a run of chunks sharing one scratch).
const MAX_TASK: usize = 64 * 1024;
/// Outputs of at least this many bytes are written with streaming stores
/// (by the register machine): far past what the caches hold, so reading
/// their lines in before overwriting them, as a plain store does, only
/// costs bandwidth.
const STREAM_BYTES: usize = 32 << 20;

/// Evaluates `expr` over `inputs` (each broadcasting to `out`'s shape).
pub(crate) fn fused(expr: &FusedExpr, out: &TensorType, inputs: &[&Value]) -> KResult<Value> {
    fused_with(expr, out, inputs, Alloc::NONE)
}

/// [`fused`], its output storage from `alloc` (a pool, when it has some).
pub(crate) fn fused_with(
    expr: &FusedExpr,
    out: &TensorType,
    inputs: &[&Value],
    alloc: Alloc<'_>,
) -> KResult<Value> {
    let inputs: Vec<Option<&Value>> = inputs.iter().copied().map(Some).collect();
    with_program(expr, out, &inputs, |program| match out.dtype {
        DType::F32 => program.run::<f32>(alloc).map(Value::F32),
        DType::I32 => program.run::<i32>(alloc).map(Value::I32),
    })
}

/// Binds `inputs` (a `None` is the in-place output, of `out`'s dtype),
/// compiles `expr` over them and hands the program to `f`.
fn with_program<T>(
    expr: &FusedExpr,
    out: &TensorType,
    inputs: &[Option<&Value>],
    f: impl FnOnce(&Program<'_>) -> KResult<T>,
) -> KResult<T> {
    let dims = out.shape.dims().to_vec();
    // Operands that are neither contiguous nor a single element are read
    // through strides; those with negative or gapped strides are copied to
    // row-major first, so every strided read lands in one plain slice.
    let copies: Vec<Option<Value>> = inputs.iter().map(|v| v.and_then(standard_copy)).collect();
    let operands = inputs
        .iter()
        .zip(&copies)
        .map(|(v, c)| match (c.as_ref().or(*v), out.dtype) {
            (Some(v), _) => bind(v, &dims),
            (None, DType::F32) => Ok(Bound::F32(Operand::Output)),
            (None, DType::I32) => Ok(Bound::I32(Operand::Output)),
        })
        .collect::<KResult<Vec<_>>>()?;
    f(&Program::compile(expr, operands, dims)?)
}

/// Where an instruction's result is, inside one chunk.
#[derive(Debug, Clone, Copy)]
enum Loc {
    /// A literal (or a value folded to one).
    Splat(Scalar),
    /// Operand `k`, contiguous, read in place.
    Direct(usize),
    /// A scratch register of the instruction's dtype.
    Reg(usize),
    /// The output chunk (the result; no instruction reads it).
    Out,
}

/// Where a step writes.
#[derive(Debug, Clone, Copy)]
enum Dst {
    Reg(usize),
    Out,
}

/// One step of the per-chunk program.
#[derive(Debug, Clone, Copy)]
enum Exec {
    /// Reads a strided operand's elements of the chunk into a register.
    Gather {
        operand: usize,
        dtype: DType,
        reg: usize,
    },
    /// Copies the output chunk (the in-place donor's elements, not yet
    /// overwritten) into a register.
    Load { dtype: DType, reg: usize },
    Unary {
        op: UnaryOp,
        dtype: DType,
        a: Loc,
        dst: Dst,
    },
    Binary {
        op: BinaryOp,
        dtype: DType,
        a: Loc,
        b: Loc,
        dst: Dst,
    },
    /// Also copies, when `from == to`.
    Cast {
        from: DType,
        to: DType,
        a: Loc,
        dst: Dst,
    },
}

/// Register allocation per dtype (f32, i32): a count and a free list.
#[derive(Default)]
struct Regs {
    count: [usize; 2],
    free: [Vec<usize>; 2],
}

impl Regs {
    fn slot(d: DType) -> usize {
        match d {
            DType::F32 => 0,
            DType::I32 => 1,
        }
    }

    fn take(&mut self, d: DType) -> usize {
        let s = Regs::slot(d);
        self.free[s].pop().unwrap_or_else(|| {
            self.count[s] += 1;
            self.count[s] - 1
        })
    }

    fn give(&mut self, d: DType, r: usize) {
        self.free[Regs::slot(d)].push(r);
    }
}

/// Registers of one task: `CHUNK` elements each, per dtype.
struct Scratch {
    f32: Vec<Vec<f32>>,
    i32: Vec<Vec<i32>>,
}

/// Compiled fused kernels, shared by every run and backend (see
/// [`cache`]).
static PROGRAMS: Cache<Code> = Cache::new();

/// A compiled fused kernel with its operands bound.
struct Program<'a> {
    operands: Vec<Bound<'a>>,
    code: Arc<Code>,
}

/// A compiled fused kernel apart from its operands' memory: registers
/// allocated, the chunk steps and the register machine. It reads each
/// operand as [`cache::key`] describes it.
struct Code {
    steps: Vec<Exec>,
    dims: Vec<usize>,
    /// Registers needed, f32 then i32.
    regs: [usize; 2],
    /// The instruction set the loops run with.
    isa: Isa,
    /// The register machine, which runs instead of `steps` for f32 and
    /// i32 expressions (casts included) where the CPU has AVX2 or AVX-512.
    #[cfg(target_arch = "x86_64")]
    machine: Option<machine::Machine>,
}

/// The instructions `instr` reads, each once.
fn args(instr: &Instr) -> ([usize; 2], usize) {
    match *instr {
        Instr::Input(_) | Instr::Scalar(_) => ([0, 0], 0),
        Instr::Unary(_, a) | Instr::Cast(_, a) => ([a, a], 1),
        Instr::Binary(_, a, b) if a == b => ([a, a], 1),
        Instr::Binary(_, a, b) => ([a, b], 2),
    }
}

/// Checks instruction `i`'s dtypes against its operands.
fn check_types(expr: &FusedExpr, i: usize, operands: &[Bound<'_>]) -> KResult<()> {
    let d = &expr.dtypes;
    let bad = |what: &str| Err(format!("fused instruction %{i} ({}): {what}", d[i]));
    match expr.instrs[i] {
        Instr::Input(k) => match operands.get(k) {
            None => bad(&format!("reads operand {k} of {}", operands.len())),
            Some(Bound::F32(_)) if d[i] != DType::F32 => bad("operand holds f32"),
            Some(Bound::I32(_)) if d[i] != DType::I32 => bad("operand holds i32"),
            Some(_) => Ok(()),
        },
        Instr::Scalar(s) if s.dtype() != d[i] => bad("literal of another dtype"),
        Instr::Unary(op, _) if op.float_only() && !d[i].is_float() => {
            bad(&format!("{} is not defined for {}", op.name(), d[i]))
        }
        Instr::Unary(_, a) if d[a] != d[i] => bad("operand of another dtype"),
        Instr::Binary(_, a, b) if d[a] != d[i] || d[b] != d[i] => bad("operand of another dtype"),
        Instr::Cast(to, _) if to != d[i] => bad("cast to another dtype"),
        Instr::Scalar(_) | Instr::Unary(..) | Instr::Binary(..) | Instr::Cast(..) => Ok(()),
    }
}

impl<'a> Program<'a> {
    /// `expr` over `operands`, compiled, or taken from [`PROGRAMS`] when it
    /// was compiled for operands of the same kinds before. A program
    /// reading a single-element operand has its value folded in; that
    /// value often changes every run (a mean subtracted, a fed scale), and
    /// keeping such programs would fill the table with code used once,
    /// so they are compiled every time.
    fn compile(expr: &FusedExpr, operands: Vec<Bound<'a>>, dims: Vec<usize>) -> KResult<Self> {
        let splat = |b: &Bound<'_>| {
            matches!(
                b,
                Bound::F32(Operand::Splat(_)) | Bound::I32(Operand::Splat(_))
            )
        };
        if operands.iter().any(splat) {
            let code = Arc::new(Code::compile(expr, &operands, dims)?);
            return Ok(Program { operands, code });
        }
        let key = cache::key(expr, &operands, &dims);
        let code = PROGRAMS.get_or_compile(key, || Code::compile(expr, &operands, dims))?;
        Ok(Program { operands, code })
    }
}

impl Code {
    /// Checks `expr` against its operands and lowers it to steps, giving
    /// each intermediate a register that is reused after its last reader.
    /// Instructions of literals only are folded here, once.
    fn compile(expr: &FusedExpr, operands: &[Bound<'_>], dims: Vec<usize>) -> KResult<Self> {
        let n = expr.instrs.len();
        if n == 0 || expr.dtypes.len() != n {
            return Err(format!(
                "fused program has {n} instructions and {} dtypes",
                expr.dtypes.len()
            ));
        }
        let mut last_use = vec![0usize; n];
        for (i, instr) in expr.instrs.iter().enumerate() {
            let (a, k) = args(instr);
            for &a in &a[..k] {
                if a >= i {
                    return Err(format!(
                        "fused instruction %{i} reads %{a}, not an earlier one"
                    ));
                }
                last_use[a] = i;
            }
        }
        let mut steps = Vec::new();
        let mut regs = Regs::default();
        let mut locs: Vec<Loc> = Vec::with_capacity(n);
        for (i, (&instr, &dtype)) in expr.instrs.iter().zip(&expr.dtypes).enumerate() {
            check_types(expr, i, operands)?;
            // The result goes to the output, or to a fresh register taken
            // before the operands' registers are freed, so never aliases one.
            let dst = if i + 1 == n {
                Dst::Out
            } else {
                Dst::Reg(regs.take(dtype))
            };
            let loc = |dst| match dst {
                Dst::Reg(r) => Loc::Reg(r),
                Dst::Out => Loc::Out,
            };
            let loc = match instr {
                Instr::Scalar(s) => Loc::Splat(s),
                Instr::Input(k) => match &operands[k] {
                    Bound::F32(Operand::Splat(x)) => Loc::Splat(Scalar::F32(*x)),
                    Bound::I32(Operand::Splat(x)) => Loc::Splat(Scalar::I32(*x)),
                    Bound::F32(Operand::Contig(_)) | Bound::I32(Operand::Contig(_)) => {
                        Loc::Direct(k)
                    }
                    Bound::F32(Operand::Strided { .. }) | Bound::I32(Operand::Strided { .. }) => {
                        let reg = match dst {
                            Dst::Reg(r) => r,
                            Dst::Out => regs.take(dtype),
                        };
                        steps.push(Exec::Gather {
                            operand: k,
                            dtype,
                            reg,
                        });
                        Loc::Reg(reg)
                    }
                    Bound::F32(Operand::Output) | Bound::I32(Operand::Output) => {
                        let reg = match dst {
                            Dst::Reg(r) => r,
                            Dst::Out => regs.take(dtype),
                        };
                        steps.push(Exec::Load { dtype, reg });
                        Loc::Reg(reg)
                    }
                },
                Instr::Unary(op, a) => match locs[a] {
                    Loc::Splat(s) => Loc::Splat(fold_unary(op, s)),
                    a => {
                        steps.push(Exec::Unary { op, dtype, a, dst });
                        loc(dst)
                    }
                },
                Instr::Binary(op, a, b) => match (locs[a], locs[b]) {
                    (Loc::Splat(x), Loc::Splat(y)) => Loc::Splat(fold_binary(op, x, y)?),
                    (a, b) => {
                        steps.push(Exec::Binary {
                            op,
                            dtype,
                            a,
                            b,
                            dst,
                        });
                        loc(dst)
                    }
                },
                Instr::Cast(to, a) => match locs[a] {
                    Loc::Splat(s) => Loc::Splat(cast_scalar(s, to)),
                    la => {
                        let from = expr.dtypes[a];
                        steps.push(Exec::Cast {
                            from,
                            to,
                            a: la,
                            dst,
                        });
                        loc(dst)
                    }
                },
            };
            // A register taken but not written (the result folded or is
            // read in place) goes straight back.
            if let Dst::Reg(r) = dst
                && !matches!(loc, Loc::Reg(x) if x == r)
            {
                regs.give(dtype, r);
            }
            let (a, k) = args(&instr);
            for &a in &a[..k] {
                if let (true, Loc::Reg(r)) = (last_use[a] == i, locs[a]) {
                    regs.give(expr.dtypes[a], r);
                }
            }
            locs.push(loc);
        }
        // A result no step wrote into the output (an operand, a literal, a
        // folded value) is copied there.
        let dtype = expr.dtypes[n - 1];
        if let Some(&result) = locs.last()
            && !matches!(result, Loc::Out)
        {
            steps.push(Exec::Cast {
                from: dtype,
                to: dtype,
                a: result,
                dst: Dst::Out,
            });
        }
        let isa = Isa::detect();
        #[cfg(target_arch = "x86_64")]
        let machine = machine::Machine::compile(expr, operands, isa)?;
        Ok(Code {
            steps,
            dims,
            regs: regs.count,
            isa,
            #[cfg(target_arch = "x86_64")]
            machine,
        })
    }
}

impl Program<'_> {
    /// Scratch for one task: none when the register machine runs every
    /// part, else the chunk registers.
    fn scratch(&self) -> Scratch {
        #[cfg(target_arch = "x86_64")]
        if self.code.machine.is_some() {
            return Scratch {
                f32: Vec::new(),
                i32: Vec::new(),
            };
        }
        self.chunk_scratch()
    }

    /// The chunk program's registers.
    fn chunk_scratch(&self) -> Scratch {
        Scratch {
            f32: (0..self.code.regs[0]).map(|_| vec![0.0; CHUNK]).collect(),
            i32: (0..self.code.regs[1]).map(|_| vec![0; CHUNK]).collect(),
        }
    }

    /// Runs the program over the whole output.
    fn run<R: Lane + Pooled>(&self, alloc: Alloc<'_>) -> KResult<ArrayD<R>> {
        let n: usize = self.code.dims.iter().product();
        // Storage of a freed buffer of the same size class, when the pool
        // keeps one: its pages are already faulted in. Otherwise
        // `vec![0; n]` is one `calloc`: a large output comes as fresh,
        // lazily zeroed pages, so no thread zeroes it up front and each
        // page is faulted in by the rayon worker that first writes it.
        // Those faults (the kernel clearing each page) are most of the
        // remaining cost of a large fused kernel; see `fused_throughput`.
        // Every element is overwritten below, so old contents never show.
        let mut out = alloc.vec::<R>(n);
        self.run_into(&mut out)?;
        ArrayD::from_shape_vec(IxDyn(&self.code.dims), out).map_err(|e| e.to_string())
    }

    /// Runs the program over `out`, the whole output, row-major.
    fn run_into<R: Lane>(&self, out: &mut [R]) -> KResult<()> {
        let n = out.len();
        if n != self.code.dims.iter().product::<usize>() {
            return Err(format!(
                "fused kernel: {n} output elements for {:?}",
                self.code.dims
            ));
        }
        // A whole output far larger than the caches is written around
        // them (where the machine runs); a part of one, as the prologue
        // evaluates, is read back at once and is not.
        let stream = size_of_val(out) >= STREAM_BYTES;
        if n >= PAR_THRESHOLD {
            let threads = rayon::current_num_threads().max(1);
            let task = (n / (4 * threads))
                .clamp(CHUNK, MAX_TASK)
                .next_multiple_of(CHUNK);
            out.par_chunks_mut(task)
                .enumerate()
                .try_for_each(|(t, part)| {
                    self.run_part_with(t * task, part, &mut self.scratch(), stream)
                })?;
        } else if n > 0 {
            self.run_part_with(0, out, &mut self.scratch(), stream)?;
        }
        Ok(())
    }

    /// Runs the program over `part`, which starts at element `start`, with
    /// plain stores.
    fn run_part<R: Lane>(&self, start: usize, part: &mut [R], s: &mut Scratch) -> KResult<()> {
        self.run_part_with(start, part, s, false)
    }

    /// [`Program::run_part`]: the register machine when there is one
    /// (streaming its stores when told to), else the chunk steps.
    fn run_part_with<R: Lane>(
        &self,
        start: usize,
        part: &mut [R],
        s: &mut Scratch,
        stream: bool,
    ) -> KResult<()> {
        #[cfg(target_arch = "x86_64")]
        if let Some(m) = &self.code.machine {
            if m.out() != R::DTYPE {
                return Err(format!(
                    "fused kernel: a {} program writing {} elements",
                    m.out(),
                    R::DTYPE
                ));
            }
            return m.run(
                self.code.isa,
                &self.operands,
                &self.code.dims,
                start,
                R::bits(part),
                stream,
            );
        }
        let _ = stream;
        self.run_chunks(start, part, s)
    }

    /// Runs the chunk steps over `part`, which starts at element `start`.
    fn run_chunks<R: Lane>(&self, start: usize, part: &mut [R], s: &mut Scratch) -> KResult<()> {
        for (c, chunk) in part.chunks_mut(CHUNK).enumerate() {
            let at = start + c * CHUNK;
            self.run_chunk(at, chunk, s)?;
        }
        Ok(())
    }

    /// Runs every step over elements `start..start + out.len()`.
    fn run_chunk<R: Lane>(&self, start: usize, out: &mut [R], s: &mut Scratch) -> KResult<()> {
        let at = At {
            start,
            len: out.len(),
        };
        let mut out = R::wrap(out);
        let o = &mut out;
        let isa = self.code.isa;
        for step in &self.code.steps {
            use DType::{F32, I32};
            match *step {
                Exec::Gather {
                    operand,
                    dtype: F32,
                    reg,
                } => self.gather::<f32>(operand, reg, at, s),
                Exec::Gather {
                    operand,
                    dtype: I32,
                    reg,
                } => self.gather::<i32>(operand, reg, at, s),
                Exec::Load { dtype: F32, reg } => Self::load::<f32>(reg, at, s, o),
                Exec::Load { dtype: I32, reg } => Self::load::<i32>(reg, at, s, o),
                Exec::Unary {
                    op,
                    dtype: F32,
                    a,
                    dst,
                } => self.step1::<f32, f32>(a, dst, at, s, o, |x, d| unary_on(isa, op, x, d)),
                Exec::Unary {
                    op,
                    dtype: I32,
                    a,
                    dst,
                } => self.step1::<i32, i32>(a, dst, at, s, o, |x, d| unary_on(isa, op, x, d)),
                Exec::Binary {
                    op,
                    dtype: F32,
                    a,
                    b,
                    dst,
                } => self.step2::<f32>(a, b, dst, at, s, o, |x, y, d| binary_on(isa, op, x, y, d)),
                Exec::Binary {
                    op,
                    dtype: I32,
                    a,
                    b,
                    dst,
                } => self.step2::<i32>(a, b, dst, at, s, o, |x, y, d| binary_on(isa, op, x, y, d)),
                Exec::Cast {
                    from: F32,
                    to: F32,
                    a,
                    dst,
                } => self.step1::<f32, f32>(a, dst, at, s, o, |x, d| map1(x, d, |v| v)),
                Exec::Cast {
                    from: I32,
                    to: I32,
                    a,
                    dst,
                } => self.step1::<i32, i32>(a, dst, at, s, o, |x, d| map1(x, d, |v| v)),
                Exec::Cast {
                    from: F32,
                    to: I32,
                    a,
                    dst,
                } => self.step1::<f32, i32>(a, dst, at, s, o, |x, d| map1(x, d, |v| v as i32)),
                Exec::Cast {
                    from: I32,
                    to: F32,
                    a,
                    dst,
                } => self.step1::<i32, f32>(a, dst, at, s, o, |x, d| map1(x, d, |v| v as f32)),
            }?;
        }
        Ok(())
    }

    /// The chunk of the value at `loc`.
    fn src<'s, T: Lane>(&'s self, loc: Loc, at: At, s: &'s Scratch) -> KResult<Src<'s, T>> {
        let range = at.start..at.start + at.len;
        match loc {
            Loc::Splat(x) => T::scalar(x).map(Src::Splat),
            Loc::Direct(k) => match self.operands.get(k).and_then(T::operand) {
                Some(Operand::Contig(data)) => data.get(range).map(Src::Slice),
                _ => None,
            },
            Loc::Reg(r) => T::regs(s)
                .get(r)
                .and_then(|v| v.get(..at.len))
                .map(Src::Slice),
            Loc::Out => None,
        }
        .ok_or_else(|| format!("fused kernel: no {} value at {loc:?}", T::DTYPE))
    }

    /// Runs `f` with the destination of a step as a mutable slice: a
    /// register (taken out of the scratch meanwhile, so the sources can
    /// borrow the rest) or the output chunk.
    fn with_dst<T: Lane>(
        dst: Dst,
        at: At,
        s: &mut Scratch,
        out: &mut Out<'_>,
        f: impl FnOnce(&Scratch, &mut [T]) -> KResult<()>,
    ) -> KResult<()> {
        let missing = || format!("fused kernel: no {} destination {dst:?}", T::DTYPE);
        match dst {
            Dst::Out => f(s, T::out(out).ok_or_else(missing)?),
            Dst::Reg(r) => {
                let reg = T::regs_mut(s).get_mut(r).ok_or_else(missing)?;
                let mut v = std::mem::take(reg);
                let result = f(s, &mut v[..at.len]);
                if let Some(reg) = T::regs_mut(s).get_mut(r) {
                    *reg = v;
                }
                result
            }
        }
    }

    /// A step of one operand of dtype `A` into a destination of dtype `B`.
    fn step1<A: Lane, B: Lane>(
        &self,
        a: Loc,
        dst: Dst,
        at: At,
        s: &mut Scratch,
        out: &mut Out<'_>,
        f: impl FnOnce(Src<'_, A>, &mut [B]),
    ) -> KResult<()> {
        Self::with_dst::<B>(dst, at, s, out, |s, d| {
            f(self.src::<A>(a, at, s)?, d);
            Ok(())
        })
    }

    /// A step of two operands of dtype `T`.
    #[allow(clippy::too_many_arguments)]
    fn step2<T: Lane>(
        &self,
        a: Loc,
        b: Loc,
        dst: Dst,
        at: At,
        s: &mut Scratch,
        out: &mut Out<'_>,
        f: impl FnOnce(Src<'_, T>, Src<'_, T>, &mut [T]),
    ) -> KResult<()> {
        Self::with_dst::<T>(dst, at, s, out, |s, d| {
            f(self.src::<T>(a, at, s)?, self.src::<T>(b, at, s)?, d);
            Ok(())
        })
    }

    /// Copies the output chunk into register `reg` (before anything
    /// writes it: only the last step writes the output).
    fn load<T: Lane>(reg: usize, at: At, s: &mut Scratch, out: &mut Out<'_>) -> KResult<()> {
        let src = T::out(out).ok_or("fused kernel: output of another dtype")?;
        let dst = T::regs_mut(s)
            .get_mut(reg)
            .and_then(|v| v.get_mut(..at.len))
            .ok_or("fused kernel: no load register")?;
        dst.copy_from_slice(src);
        Ok(())
    }

    /// Reads strided operand `k`'s elements of the chunk into register `reg`.
    fn gather<T: Lane>(&self, k: usize, reg: usize, at: At, s: &mut Scratch) -> KResult<()> {
        let Some(Operand::Strided { data, strides }) = self.operands.get(k).and_then(T::operand)
        else {
            return Err(format!(
                "fused kernel: operand {k} is not a strided {}",
                T::DTYPE
            ));
        };
        let dst = T::regs_mut(s)
            .get_mut(reg)
            .and_then(|v| v.get_mut(..at.len))
            .ok_or("fused kernel: no gather register")?;
        gather(data, strides, &self.code.dims, at.start, dst);
        Ok(())
    }
}

/// A chunk: elements `start..start + len` of the output.
#[derive(Debug, Clone, Copy)]
struct At {
    start: usize,
    len: usize,
}
