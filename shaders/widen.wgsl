// widen.wgsl — 16-bit floats to f32, exactly as the host converts them
// (the `half` crate's `to_f32`, which burn's own loading uses): every value
// kept, a NaN's payload kept and made quiet. The decoder writes a BF16 or
// F16 tensor where a framework can hold only f32; this makes it f32 on
// the device, into the framework's own buffer, transposed where asked
// (a PyTorch linear weight, `[out, in]`, is `[in, out]` in burn).

struct WidenParams {
    // Elements to widen.
    count: u32,
    // Threads in the whole dispatch.
    stride: u32,
    // The source's columns when it is a matrix written transposed, else 0.
    columns: u32,
    // The source's rows when it is written transposed.
    rows: u32,
}

@group(0) @binding(0) var<uniform> params: WidenParams;
// Two 16-bit values a word, the first in the low half.
@group(0) @binding(1) var<storage, read> narrow: array<u32>;
@group(0) @binding(2) var<storage, read_write> wide: array<u32>;

fn narrow_value(i: u32) -> u32 {
    return (narrow[i / 2u] >> ((i & 1u) * 16u)) & 0xffffu;
}

// Where source element `i` goes: the same place, or element (column, row)
// of the transposed matrix.
fn wide_index(i: u32) -> u32 {
    if (params.columns == 0u) {
        return i;
    }
    return (i % params.columns) * params.rows + i / params.columns;
}

@compute @workgroup_size(256)
fn widen_bf16(@builtin(global_invocation_id) id: vec3<u32>) {
    for (var i = id.x; i < params.count; i += params.stride) {
        var value = narrow_value(i);
        if ((value & 0x7fffu) > 0x7f80u) {
            value |= 0x0040u;
        }
        wide[wide_index(i)] = value << 16u;
    }
}

@compute @workgroup_size(256)
fn widen_f16(@builtin(global_invocation_id) id: vec3<u32>) {
    for (var i = id.x; i < params.count; i += params.stride) {
        let value = narrow_value(i);
        let sign = (value & 0x8000u) << 16u;
        let exponent = (value >> 10u) & 0x1fu;
        let mantissa = value & 0x3ffu;
        var bits: u32;
        if (exponent == 0x1fu) {
            bits = select(0x7fc00000u | (mantissa << 13u), 0x7f800000u, mantissa == 0u);
        } else if (exponent != 0u) {
            bits = ((exponent + 112u) << 23u) | (mantissa << 13u);
        } else if (mantissa == 0u) {
            bits = 0u;
        } else {
            // A subnormal, mantissa × 2^-24: its leading one becomes the
            // implicit bit.
            let leading = 31u - countLeadingZeros(mantissa);
            bits = ((leading + 103u) << 23u) | ((mantissa << (23u - leading)) & 0x7fffffu);
        }
        wide[wide_index(i)] = sign | bits;
    }
}

// F32 is kept as it is; only its place may change.
@compute @workgroup_size(256)
fn widen_f32(@builtin(global_invocation_id) id: vec3<u32>) {
    for (var i = id.x; i < params.count; i += params.stride) {
        wide[wide_index(i)] = narrow[i];
    }
}
