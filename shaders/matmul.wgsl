// matmul.wgsl: batched C = A x B, tiled. Each workgroup of 16 x 16
// threads computes a 64 x 64 tile of C; each thread a 4 x 4 block of it
// (rows ty + 16 i, columns tx + 16 j: conflict-free workgroup reads,
// coalesced stores). K advances 16 at a time through A and B tiles staged
// in workgroup memory. Out-of-range rows, columns and k read as zero, so
// any M, N, K works; batch axes broadcast through per-operand strides.
//
// A and B are bound twice, as scalars and as vec4: when K (for A) or N
// (for B) is a multiple of 4 the tile loads use 16-byte vector loads.
// Both views are read-only, which WebGPU allows on one buffer.
//
// Bindings (group 0):
//   0  a:  array<{{T}}>          read-only storage, [..batch, M, K] row-major
//   1  a4: array<vec4<{{T}}>>    read-only storage, the same buffer
//   2  b:  array<{{T}}>          read-only storage, [..batch, K, N] row-major
//   3  b4: array<vec4<{{T}}>>    read-only storage, the same buffer
//   4  c:  array<{{T}}>          read_write storage, [..batch, M, N]
//   5  p:  Params                uniform
// struct Params {
//   m: u32, n: u32, k: u32, batch: u32,             // batch: product of batch dims
//   tiles_n: u32, tiles_m: u32, a_vec4: u32, b_vec4: u32,
//   batch_rank: u32, _pad0: u32, _pad1: u32, _pad2: u32,
//   batch_shape: array<vec4<u32>, 2>,      // output batch dims (rank <= 8)
//   a_batch_strides: array<vec4<u32>, 2>,  // elements between A matrices (0 broadcasts)
//   b_batch_strides: array<vec4<u32>, 2>,
// }
//
// Template: {{T}} element type (f32 | i32). Dispatch: tiles_n * tiles_m *
// batch workgroups in all, folded over x and y past the per-dimension cap.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    batch: u32,
    tiles_n: u32,
    tiles_m: u32,
    a_vec4: u32,
    b_vec4: u32,
    batch_rank: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
    batch_shape: array<vec4<u32>, 2>,
    a_batch_strides: array<vec4<u32>, 2>,
    b_batch_strides: array<vec4<u32>, 2>,
}

const TILE: u32 = 64u;
const TK: u32 = 16u;

@group(0) @binding(0) var<storage, read> a: array<{{T}}>;
@group(0) @binding(1) var<storage, read> a4: array<vec4<{{T}}>>;
@group(0) @binding(2) var<storage, read> b: array<{{T}}>;
@group(0) @binding(3) var<storage, read> b4: array<vec4<{{T}}>>;
@group(0) @binding(4) var<storage, read_write> c: array<{{T}}>;
@group(0) @binding(5) var<uniform> p: Params;

// Tiles stored k-major: as_tile[k][row of A], bs_tile[k][column of B].
var<workgroup> as_tile: array<array<{{T}}, 64>, 16>;
var<workgroup> bs_tile: array<array<{{T}}, 64>, 16>;

fn load_a(a_off: u32, m0: u32, k0: u32, li: u32) {
    if p.a_vec4 != 0u {
        // 64 rows x 4 vec4 = 256 loads, one per thread.
        let row = li / 4u;
        let kv = (li % 4u) * 4u;
        let gm = m0 + row;
        let gk = k0 + kv;
        var v = vec4<{{T}}>({{T}}(0));
        if gm < p.m && gk < p.k {
            v = a4[(a_off + gm * p.k + gk) / 4u];
        }
        as_tile[kv][row] = v.x;
        as_tile[kv + 1u][row] = v.y;
        as_tile[kv + 2u][row] = v.z;
        as_tile[kv + 3u][row] = v.w;
    } else {
        for (var l = 0u; l < 4u; l = l + 1u) {
            let idx = li + 256u * l;
            let row = idx / TK;
            let kk = idx % TK;
            let gm = m0 + row;
            let gk = k0 + kk;
            var v = {{T}}(0);
            if gm < p.m && gk < p.k {
                v = a[a_off + gm * p.k + gk];
            }
            as_tile[kk][row] = v;
        }
    }
}

fn load_b(b_off: u32, n0: u32, k0: u32, li: u32) {
    if p.b_vec4 != 0u {
        // 16 rows x 16 vec4 = 256 loads, one per thread.
        let row = li / 16u;
        let col = (li % 16u) * 4u;
        let gk = k0 + row;
        let gn = n0 + col;
        var v = vec4<{{T}}>({{T}}(0));
        if gk < p.k && gn < p.n {
            v = b4[(b_off + gk * p.n + gn) / 4u];
        }
        bs_tile[row][col] = v.x;
        bs_tile[row][col + 1u] = v.y;
        bs_tile[row][col + 2u] = v.z;
        bs_tile[row][col + 3u] = v.w;
    } else {
        for (var l = 0u; l < 4u; l = l + 1u) {
            let idx = li + 256u * l;
            let row = idx / TILE;
            let col = idx % TILE;
            let gk = k0 + row;
            let gn = n0 + col;
            var v = {{T}}(0);
            if gk < p.k && gn < p.n {
                v = b[b_off + gk * p.n + gn];
            }
            bs_tile[row][col] = v;
        }
    }
}

@compute @workgroup_size(16, 16)
fn main(
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let wg = wid.x + wid.y * nwg.x;
    let per_batch = p.tiles_n * p.tiles_m;
    // Uniform per workgroup, so returning here keeps barriers uniform.
    if wg >= per_batch * p.batch {
        return;
    }
    let bi = wg / per_batch;
    let t = wg % per_batch;
    let m0 = (t / p.tiles_n) * TILE;
    let n0 = (t % p.tiles_n) * TILE;

    var a_off = 0u;
    var b_off = 0u;
    var rest = bi;
    for (var d = i32(p.batch_rank) - 1; d >= 0; d = d - 1) {
        let q = u32(d);
        let dim = p.batch_shape[q / 4u][q % 4u];
        let coord = rest % dim;
        rest = rest / dim;
        a_off = a_off + coord * p.a_batch_strides[q / 4u][q % 4u];
        b_off = b_off + coord * p.b_batch_strides[q / 4u][q % 4u];
    }

    let tx = lid.x;
    let ty = lid.y;
    var acc: array<vec4<{{T}}>, 4>;
    for (var k0 = 0u; k0 < p.k; k0 = k0 + TK) {
        load_a(a_off, m0, k0, li);
        load_b(b_off, n0, k0, li);
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk = kk + 1u) {
            let bv = vec4<{{T}}>(bs_tile[kk][tx], bs_tile[kk][tx + 16u], bs_tile[kk][tx + 32u], bs_tile[kk][tx + 48u]);
            acc[0] = acc[0] + as_tile[kk][ty] * bv;
            acc[1] = acc[1] + as_tile[kk][ty + 16u] * bv;
            acc[2] = acc[2] + as_tile[kk][ty + 32u] * bv;
            acc[3] = acc[3] + as_tile[kk][ty + 48u] * bv;
        }
        workgroupBarrier();
    }

    let c_off = bi * p.m * p.n;
    for (var i = 0u; i < 4u; i = i + 1u) {
        let gm = m0 + ty + 16u * i;
        if gm < p.m {
            for (var j = 0u; j < 4u; j = j + 1u) {
                let gn = n0 + tx + 16u * j;
                if gn < p.n {
                    c[c_off + gm * p.n + gn] = acc[i][j];
                }
            }
        }
    }
}
