//! Batched matrix product through the tiled `matmul.wgsl` kernel, plain or
//! with an elementwise epilogue applied at each store.

use super::Operand;
use crate::epilogue::MatMulProgram;
use crate::fused::Access;
use crate::params::{Params, broadcast_strides, collapse, to_u32};
use crate::record::{Binding, Recorder};

/// Output tile edge of one workgroup.
const TILE: usize = 64;

/// `c = program(a x b, extras...)` over the last two axes; leading axes
/// broadcast, and each extra operand broadcasts to `c`'s shape. A and B
/// lose their `vec4` views when the adapter's storage bindings would not
/// hold them with the extras.
pub fn matmul(
    rec: &mut Recorder<'_>,
    program: MatMulProgram,
    a: &Operand,
    b: &Operand,
    extras: &[Operand],
    c: &Operand,
) -> Result<(), String> {
    let (ad, bd, cd) = (a.dims(), b.dims(), c.dims());
    if ad.len() < 2 || bd.len() < 2 || cd.len() < 2 {
        return Err(format!(
            "matmul needs rank >= 2 operands, got {} and {}",
            a.ty, b.ty
        ));
    }
    let (m, k, n) = (ad[ad.len() - 2], ad[ad.len() - 1], bd[bd.len() - 1]);
    if c.numel() == 0 {
        return Ok(());
    }
    let max = rec.gpu.limits.max_storage_buffers_per_shader_stage as usize;
    let views = program.clone().with_views(true).storage_buffers() <= max;
    let program = program.with_views(views);
    let rank = cd.len();
    let batch_out = &cd[..rank - 2];
    let scale = |s: Vec<usize>, mat: usize| s.into_iter().map(|v| v * mat).collect::<Vec<_>>();
    let mut strides = vec![
        scale(broadcast_strides(&ad[..ad.len() - 2], batch_out), m * k),
        scale(broadcast_strides(&bd[..bd.len() - 2], batch_out), k * n),
    ];
    // Strided extras: batch strides join the collapse; row and column
    // strides are kept apart.
    let mut rows_cols = Vec::new();
    let mut bindings = vec![a.binding()];
    if views {
        bindings.push(Binding::vec4s(&a.buffer, a.ty.bytes()));
    }
    bindings.push(b.binding());
    if views {
        bindings.push(Binding::vec4s(&b.buffer, b.ty.bytes()));
    }
    for (j, x) in extras.iter().enumerate() {
        match program.access(j + 1) {
            None | Some(Access::Unused) => {}
            Some(Access::Full | Access::Single) => bindings.push(x.binding()),
            Some(Access::Strided) => {
                bindings.push(x.binding());
                let s = broadcast_strides(x.dims(), cd);
                rows_cols.push([s[rank - 2], s[rank - 1]]);
                strides.push(s[..rank - 2].to_vec());
            }
        }
    }
    bindings.push(c.binding());
    let (batch_dims, strides) = collapse(batch_out, &strides);
    let batch: usize = batch_out.iter().product();
    let (tiles_n, tiles_m) = (n.div_ceil(TILE), m.div_ceil(TILE));
    let mut params = Params::new(&[
        to_u32(m)?,
        to_u32(n)?,
        to_u32(k)?,
        to_u32(batch)?,
        to_u32(tiles_n)?,
        to_u32(tiles_m)?,
        u32::from(k % 4 == 0),
        u32::from(n % 4 == 0),
        to_u32(batch_dims.len())?,
        0,
    ])
    .array(&batch_dims)?
    .array(&strides[0])?
    .array(&strides[1])?;
    for (rc, s) in rows_cols.iter().zip(&strides[2..]) {
        let mut e = rc.to_vec();
        e.extend_from_slice(s);
        params = params.array(&e)?;
    }
    let groups = (tiles_n * tiles_m) as u64 * batch as u64;
    rec.dispatch(&program.shader_key(), bindings, params, groups)
}
