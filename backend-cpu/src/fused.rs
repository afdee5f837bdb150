//! The fused elementwise kernel: a [`FusedExpr`] evaluated over its
//! broadcast operands in one pass over memory.
//!
//! The output is cut into chunks small enough that every live intermediate
//! stays in L1. Each chunk runs the program instruction by instruction,
//! each instruction a plain loop over a slice (so it vectorises), its
//! result in a scratch register; the last instruction writes straight into
//! the output. Dispatch on the op happens once per instruction per chunk,
//! never per element. Large outputs split into rayon tasks of many chunks.

use ndarray::{ArrayD, IxDyn};
use rayon::prelude::*;
use tensorgraph_core::{BinaryOp, DType, FusedExpr, Instr, Scalar, TensorType, UnaryOp, Value};

use crate::element::{Element, KResult, PAR_THRESHOLD};
use crate::elementwise::sigmoid;

/// Elements per chunk: a few registers of this many elements fit in L1.
const CHUNK: usize = 2048;
/// Most elements per rayon task (a run of chunks sharing one scratch).
const MAX_TASK: usize = 64 * 1024;

/// Evaluates `expr` over `inputs` (each broadcasting to `out`'s shape).
pub(crate) fn fused(expr: &FusedExpr, out: &TensorType, inputs: &[&Value]) -> KResult<Value> {
    let dims = out.shape.dims().to_vec();
    // Operands that are neither contiguous nor a single element are read
    // through strides; those with negative or gapped strides are copied to
    // row-major first, so every strided read lands in one plain slice.
    let copies: Vec<Option<Value>> = inputs.iter().map(|v| standard_copy(v)).collect();
    let values: Vec<&Value> = inputs
        .iter()
        .zip(&copies)
        .map(|(v, c)| c.as_ref().unwrap_or(v))
        .collect();
    let operands = values
        .iter()
        .map(|v| bind(v, &dims))
        .collect::<KResult<Vec<_>>>()?;
    let program = Program::compile(expr, operands, dims)?;
    match out.dtype {
        DType::F32 => program.run::<f32>().map(Value::F32),
        DType::I32 => program.run::<i32>().map(Value::I32),
    }
}

/// A row-major copy of `v` when its memory is not one slice with
/// non-negative strides (and it is not read as a single element).
fn standard_copy(v: &Value) -> Option<Value> {
    fn plain<T>(a: &ArrayD<T>) -> bool {
        a.len() <= 1 || (a.as_slice_memory_order().is_some() && a.strides().iter().all(|&s| s >= 0))
    }
    match v {
        Value::F32(a) if !plain(a) => Some(Value::F32(a.as_standard_layout().into_owned())),
        Value::I32(a) if !plain(a) => Some(Value::I32(a.as_standard_layout().into_owned())),
        Value::F32(_) | Value::I32(_) => None,
    }
}

/// How one kernel operand is read.
enum Operand<'a, T> {
    /// One element, the same everywhere.
    Splat(T),
    /// The output's shape, row-major: a chunk is a sub-slice.
    Contig(&'a [T]),
    /// Anything else: per output axis, the step in `data` (0 where the
    /// operand broadcasts).
    Strided {
        /// The operand's memory, element `[0, .., 0]` first.
        data: &'a [T],
        /// One stride per output axis.
        strides: Vec<usize>,
    },
}

/// An operand of either dtype.
enum Bound<'a> {
    F32(Operand<'a, f32>),
    I32(Operand<'a, i32>),
}

fn bind<'a>(v: &'a Value, dims: &[usize]) -> KResult<Bound<'a>> {
    Ok(match v {
        Value::F32(a) => Bound::F32(bind_array(a, dims)?),
        Value::I32(a) => Bound::I32(bind_array(a, dims)?),
    })
}

fn bind_array<'a, T: Copy>(a: &'a ArrayD<T>, dims: &[usize]) -> KResult<Operand<'a, T>> {
    let bad = || format!("cannot broadcast operand {:?} to {dims:?}", a.shape());
    let rank = dims.len();
    if a.ndim() > rank {
        return Err(bad());
    }
    if a.len() == 1 {
        return a.iter().next().map(|&x| Operand::Splat(x)).ok_or_else(bad);
    }
    if a.shape() == dims
        && let Some(s) = a.as_slice()
    {
        return Ok(Operand::Contig(s));
    }
    let data = a
        .as_slice_memory_order()
        .ok_or("strided operand was not made contiguous")?;
    let lead = rank - a.ndim();
    let mut strides = vec![0; rank];
    let mut last = 0usize;
    for (i, (&d, &s)) in a.shape().iter().zip(a.strides()).enumerate() {
        let want = dims[lead + i];
        if d == want && d != 1 {
            strides[lead + i] = usize::try_from(s).map_err(|_| bad())?;
            last += d.saturating_sub(1) * strides[lead + i];
        } else if d != 1 {
            return Err(bad());
        }
    }
    // Every strided read stays in bounds when the farthest one does.
    if dims.iter().all(|&d| d > 0) && last >= data.len() {
        return Err(format!(
            "operand strides reach past its {} elements",
            data.len()
        ));
    }
    Ok(Operand::Strided { data, strides })
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

/// A compiled fused kernel: operands bound, registers allocated.
struct Program<'a> {
    operands: Vec<Bound<'a>>,
    steps: Vec<Exec>,
    dims: Vec<usize>,
    /// Registers needed, f32 then i32.
    regs: [usize; 2],
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
    /// Checks `expr` against its operands and lowers it to steps, giving
    /// each intermediate a register that is reused after its last reader.
    /// Instructions of literals only are folded here, once.
    fn compile(expr: &FusedExpr, operands: Vec<Bound<'a>>, dims: Vec<usize>) -> KResult<Self> {
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
            check_types(expr, i, &operands)?;
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
        Ok(Program {
            operands,
            steps,
            dims,
            regs: regs.count,
        })
    }

    fn scratch(&self) -> Scratch {
        Scratch {
            f32: (0..self.regs[0]).map(|_| vec![0.0; CHUNK]).collect(),
            i32: (0..self.regs[1]).map(|_| vec![0; CHUNK]).collect(),
        }
    }

    /// Runs the program over the whole output.
    fn run<R: Lane>(&self) -> KResult<ArrayD<R>> {
        let n: usize = self.dims.iter().product();
        let mut out = vec![R::default(); n];
        if n >= PAR_THRESHOLD {
            let threads = rayon::current_num_threads().max(1);
            let task = (n / (4 * threads))
                .clamp(CHUNK, MAX_TASK)
                .next_multiple_of(CHUNK);
            out.par_chunks_mut(task)
                .enumerate()
                .try_for_each(|(t, part)| self.run_part(t * task, part, &mut self.scratch()))?;
        } else if n > 0 {
            self.run_part(0, &mut out, &mut self.scratch())?;
        }
        ArrayD::from_shape_vec(IxDyn(&self.dims), out).map_err(|e| e.to_string())
    }

    /// Runs the chunks of `part`, which starts at element `start`.
    fn run_part<R: Lane>(&self, start: usize, part: &mut [R], s: &mut Scratch) -> KResult<()> {
        for (c, chunk) in part.chunks_mut(CHUNK).enumerate() {
            self.run_chunk(start + c * CHUNK, chunk, s)?;
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
        for step in &self.steps {
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
                Exec::Unary {
                    op,
                    dtype: F32,
                    a,
                    dst,
                } => self.step1::<f32, f32>(a, dst, at, s, o, |x, d| unary(op, x, d)),
                Exec::Unary {
                    op,
                    dtype: I32,
                    a,
                    dst,
                } => self.step1::<i32, i32>(a, dst, at, s, o, |x, d| unary(op, x, d)),
                Exec::Binary {
                    op,
                    dtype: F32,
                    a,
                    b,
                    dst,
                } => self.step2::<f32>(a, b, dst, at, s, o, |x, y, d| binary(op, x, y, d)),
                Exec::Binary {
                    op,
                    dtype: I32,
                    a,
                    b,
                    dst,
                } => self.step2::<i32>(a, b, dst, at, s, o, |x, y, d| binary(op, x, y, d)),
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
        gather(data, strides, &self.dims, at.start, dst);
        Ok(())
    }
}

/// A chunk: elements `start..start + len` of the output.
#[derive(Debug, Clone, Copy)]
struct At {
    start: usize,
    len: usize,
}

/// A chunk of a value: a slice, or one element standing for all.
#[derive(Clone, Copy)]
enum Src<'s, T> {
    Slice(&'s [T]),
    Splat(T),
}

/// The output chunk, of the result's dtype.
enum Out<'o> {
    F32(&'o mut [f32]),
    I32(&'o mut [i32]),
}

/// The per-dtype plumbing of the kernel: which scratch registers, operand
/// and output variants and literals hold this type.
trait Lane: Element {
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

/// Copies the elements `start..start + dst.len()` (row-major over `dims`)
/// of a strided operand into `dst`, a run along the last axis at a time.
/// `bind_array` checked the farthest offset is inside `data`.
fn gather<T: Copy>(data: &[T], strides: &[usize], dims: &[usize], start: usize, dst: &mut [T]) {
    let rank = dims.len();
    let Some(last) = rank.checked_sub(1) else {
        dst.fill(data[0]);
        return;
    };
    let mut idx = vec![0usize; rank];
    let (mut rem, mut offset) = (start, 0usize);
    for ax in (0..rank).rev() {
        idx[ax] = rem % dims[ax];
        rem /= dims[ax];
        offset += idx[ax] * strides[ax];
    }
    let (inner, step) = (dims[last], strides[last]);
    let mut pos = 0;
    while pos < dst.len() {
        let run = (inner - idx[last]).min(dst.len() - pos);
        let d = &mut dst[pos..pos + run];
        match step {
            0 => d.fill(data[offset]),
            1 => d.copy_from_slice(&data[offset..offset + run]),
            _ => {
                for (j, x) in d.iter_mut().enumerate() {
                    *x = data[offset + j * step];
                }
            }
        }
        pos += run;
        idx[last] += run;
        offset += run * step;
        // Carry into the outer axes at the end of a row.
        let mut ax = last;
        while idx[ax] == dims[ax] && ax > 0 {
            offset -= dims[ax] * strides[ax];
            idx[ax] = 0;
            ax -= 1;
            idx[ax] += 1;
            offset += strides[ax];
        }
    }
}

/// `d[i] = f(a[i])`: a plain loop the compiler vectorises.
#[inline(always)]
fn map1<A: Copy, B: Copy>(a: Src<'_, A>, d: &mut [B], f: impl Fn(A) -> B) {
    match a {
        Src::Slice(x) => d.iter_mut().zip(x).for_each(|(o, &x)| *o = f(x)),
        Src::Splat(x) => d.fill(f(x)),
    }
}

/// `d[i] = f(a[i], b[i])`, one loop per slice/splat combination.
#[inline(always)]
fn map2<T: Copy>(a: Src<'_, T>, b: Src<'_, T>, d: &mut [T], f: impl Fn(T, T) -> T) {
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
fn unary<T: Element>(op: UnaryOp, a: Src<'_, T>, d: &mut [T]) {
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
fn binary<T: Element>(op: BinaryOp, a: Src<'_, T>, b: Src<'_, T>, d: &mut [T]) {
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
fn fold_unary(op: UnaryOp, s: Scalar) -> Scalar {
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
fn fold_binary(op: BinaryOp, a: Scalar, b: Scalar) -> KResult<Scalar> {
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
fn cast_scalar(s: Scalar, to: DType) -> Scalar {
    match (s, to) {
        (Scalar::F32(x), DType::F32) => Scalar::F32(x),
        (Scalar::I32(x), DType::I32) => Scalar::I32(x),
        (Scalar::F32(x), DType::I32) => Scalar::I32(x as i32),
        (Scalar::I32(x), DType::F32) => Scalar::F32(x as f32),
    }
}
