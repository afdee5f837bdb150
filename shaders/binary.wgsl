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
// and `b` (helpers below). Dispatch: ceil(n / 256) workgroups, folded into y.

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

// NaN test on the bits, so no fast-math assumption can fold it away.
fn is_nan(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u;
}

// NaN-propagating maximum and minimum (NaN + x is NaN).
fn max_f32(a: f32, b: f32) -> f32 {
    return select(max(a, b), a + b, is_nan(a) || is_nan(b));
}

fn min_f32(a: f32, b: f32) -> f32 {
    return select(min(a, b), a + b, is_nan(a) || is_nan(b));
}

// Division truncating toward zero; by zero gives 0 (i32::MIN / -1 wraps).
fn div_i32(a: i32, b: i32) -> i32 {
    if b == 0 {
        return 0;
    }
    if b == -1 {
        return 0 - a;
    }
    return a / b;
}

// Wrapping integer power; a negative exponent truncates 1 / a^|e|.
fn pow_i32(a: i32, e: i32) -> i32 {
    if e < 0 {
        if a == 1 {
            return 1;
        }
        if a == -1 {
            return select(1, -1, (e & 1) != 0);
        }
        return 0;
    }
    var result = 1;
    var base = a;
    var k = u32(e);
    while k != 0u {
        if (k & 1u) != 0u {
            result = result * base;
        }
        base = base * base;
        k = k >> 1u;
    }
    return result;
}

// `powf` semantics: negative bases allowed with integral exponents;
// small integral exponents by repeated squaring, for accuracy.
fn pow_f32(a: f32, b: f32) -> f32 {
    if b == 0.0 || a == 1.0 {
        return 1.0;
    }
    if is_nan(a) || is_nan(b) {
        return a + b;
    }
    let integral = floor(b) == b;
    if integral && abs(b) < 16777216.0 {
        var result = 1.0;
        var base = a;
        var k = u32(abs(b));
        while k != 0u {
            if (k & 1u) != 0u {
                result = result * base;
            }
            base = base * base;
            k = k >> 1u;
        }
        return select(result, 1.0 / result, b < 0.0);
    }
    if a < 0.0 {
        if !integral {
            // A NaN made at run time: (a - a) / (a - a) would be folded.
            return sqrt(a);
        }
        // Integral exponents this large are even.
        return exp2(b * log2(-a));
    }
    if a == 0.0 {
        return select(0.0, 1.0 / a, b < 0.0);
    }
    return exp2(b * log2(a));
}

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
