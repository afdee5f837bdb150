// binary.wgsl: two-operand elementwise ops with NumPy broadcasting,
// z[i] = {{EXPR}} of a and b, each read through its own strides (a
// broadcast axis has stride 0).
//
// Bindings (group 0):
//   0  a: array<{{T}}>           read-only storage, left operand
//   1  b: array<{{T}}>           read-only storage, right operand
//   2  z: array<{{T}}>           read_write storage, the result
//   3  p: Params                 uniform
// struct Params {
//   n: u32, rank: u32, _pad0: u32, _pad1: u32,
//   shape: array<vec4<u32>, 2>,      // output dims, outermost first (rank <= 8)
//   a_strides: array<vec4<u32>, 2>,  // element strides of a per output axis
//   b_strides: array<vec4<u32>, 2>,  // element strides of b per output axis
// }
//
// Template: {{T}} element type (f32 | i32); {{EXPR}} an expression of `a`
// and `b` over the helpers of math.wgsl (spliced in at the HELPERS
// placeholder). Dispatch: ceil(n / 256) workgroups, folded into y.

struct Params {
    n: u32,
    rank: u32,
    _pad0: u32,
    _pad1: u32,
    shape: array<vec4<u32>, 2>,
    a_strides: array<vec4<u32>, 2>,
    b_strides: array<vec4<u32>, 2>,
}

@group(0) @binding(0) var<storage, read> lhs: array<{{T}}>;
@group(0) @binding(1) var<storage, read> rhs: array<{{T}}>;
@group(0) @binding(2) var<storage, read_write> z: array<{{T}}>;
@group(0) @binding(3) var<uniform> p: Params;

{{HELPERS}}

fn op(a: {{T}}, b: {{T}}) -> {{T}} {
    return {{EXPR}};
}

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if i >= p.n {
        return;
    }
    var rest = i;
    var ia = 0u;
    var ib = 0u;
    for (var d = i32(p.rank) - 1; d >= 0; d = d - 1) {
        let k = u32(d);
        let dim = p.shape[k / 4u][k % 4u];
        let c = rest % dim;
        rest = rest / dim;
        ia = ia + c * p.a_strides[k / 4u][k % 4u];
        ib = ib + c * p.b_strides[k / 4u][k % 4u];
    }
    z[i] = op(lhs[ia], rhs[ib]);
}
