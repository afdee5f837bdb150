//! Operand binding for the fused kernel: how each operand is read
//! (a splat, the output's own layout, or through broadcast strides), and
//! the gather that reads a strided operand's elements of one chunk.

use ndarray::ArrayD;
use tensorgraph_core::Value;

use crate::element::KResult;

/// A row-major copy of `v` when its memory is not one slice with
/// non-negative strides (and it is not read as a single element).
pub(super) fn standard_copy(v: &Value) -> Option<Value> {
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
pub(super) enum Operand<'a, T> {
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
    /// The in-place donor: the output's own memory, read a chunk at a
    /// time into a register before that chunk is written.
    Output,
}

/// An operand of either dtype.
pub(super) enum Bound<'a> {
    F32(Operand<'a, f32>),
    I32(Operand<'a, i32>),
}

pub(super) fn bind<'a>(v: &'a Value, dims: &[usize]) -> KResult<Bound<'a>> {
    Ok(match v {
        Value::F32(a) => Bound::F32(bind_array(a, dims)?),
        Value::I32(a) => Bound::I32(bind_array(a, dims)?),
    })
}

pub(super) fn bind_array<'a, T: Copy>(a: &'a ArrayD<T>, dims: &[usize]) -> KResult<Operand<'a, T>> {
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

/// Copies the elements `start..start + dst.len()` (row-major over `dims`)
/// of a strided operand into `dst`, a run along the last axis at a time.
/// `bind_array` checked the farthest offset is inside `data`.
pub(super) fn gather<T: Copy>(
    data: &[T],
    strides: &[usize],
    dims: &[usize],
    start: usize,
    dst: &mut [T],
) {
    let rank = dims.len();
    let Some(last) = rank.checked_sub(1) else {
        dst.fill(data[0]);
        return;
    };
    // Called per block by the register machine: no allocation for the
    // ranks anyone uses.
    let mut small = [0usize; 8];
    let mut large = Vec::new();
    let idx: &mut [usize] = if rank <= small.len() {
        &mut small[..rank]
    } else {
        large.resize(rank, 0);
        &mut large
    };
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
