// layout.wgsl: strided copy, the one kernel behind permute, broadcast_to,
// slice, concat (one dispatch per input) and split (one per output):
//   dst[dst_off + sum(c[d] * dst_strides[d])] = src[src_off + sum(c[d] * src_strides[d])]
// for every coordinate c of `shape`, enumerated row-major.
//
// Bindings (group 0):
//   0  src: array<{{T}}>         read-only storage
//   1  dst: array<{{T}}>         read_write storage
//   2  p: Params                 uniform
// struct Params {
//   n: u32, rank: u32, src_off: u32, dst_off: u32,
//   shape: array<vec4<u32>, 2>,        // iteration dims (rank <= 8)
//   src_strides: array<vec4<u32>, 2>,  // element strides into src (0 broadcasts)
//   dst_strides: array<vec4<u32>, 2>,  // element strides into dst
// }
//
// Template: {{T}} element type (f32 | i32). Dispatch: ceil(n / 256)
// workgroups, folded into y past the per-dimension cap.

struct Params {
    n: u32,
    rank: u32,
    src_off: u32,
    dst_off: u32,
    shape: array<vec4<u32>, 2>,
    src_strides: array<vec4<u32>, 2>,
    dst_strides: array<vec4<u32>, 2>,
}

@group(0) @binding(0) var<storage, read> src: array<{{T}}>;
@group(0) @binding(1) var<storage, read_write> dst: array<{{T}}>;
@group(0) @binding(2) var<uniform> p: Params;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if i >= p.n {
        return;
    }
    var rest = i;
    var s = p.src_off;
    var t = p.dst_off;
    for (var d = i32(p.rank) - 1; d >= 0; d = d - 1) {
        let k = u32(d);
        let dim = p.shape[k / 4u][k % 4u];
        let c = rest % dim;
        rest = rest / dim;
        s = s + c * p.src_strides[k / 4u][k % 4u];
        t = t + c * p.dst_strides[k / 4u][k % 4u];
    }
    dst[t] = src[s];
}
