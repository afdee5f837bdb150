// math.wgsl: scalar helper functions shared by the elementwise shaders
// (unary, binary, cast, reduce and the generated fused kernels), spliced
// into each through its HELPERS placeholder so every kernel computes
// the same op the same way. A snippet, not a shader: no bindings, no
// entry point, no template arguments of its own.

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

// tanh without overflow for large |v| (exp of a non-positive argument)
// and without cancellation near 0 (a Taylor polynomial below 0.125, where
// its first omitted term is under 1e-11 relative).
fn tanh_safe(v: f32) -> f32 {
    let a = abs(v);
    if a < 0.125 {
        let x2 = v * v;
        return v * (1.0 + x2 * (-1.0 / 3.0 + x2 * (2.0 / 15.0 + x2 * (-17.0 / 315.0 + x2 * (62.0 / 2835.0)))));
    }
    let e = exp(-2.0 * a);
    let t = (1.0 - e) / (1.0 + e);
    return select(t, -t, v < 0.0);
}

fn sigmoid(v: f32) -> f32 {
    return 1.0 / (1.0 + exp(-v));
}

// Negatives become 0; NaN and -0.0 pass through, as on the CPU.
fn relu_f32(v: f32) -> f32 {
    return select(v, 0.0, v < 0.0);
}

// f32 -> i32 truncating toward zero, saturating; NaN becomes 0 (Rust `as`).
fn f32_to_i32(v: f32) -> i32 {
    if is_nan(v) {
        return 0;
    }
    if v >= 2147483648.0 {
        return 2147483647;
    }
    if v <= -2147483648.0 {
        return -2147483647 - 1;
    }
    return i32(v);
}
