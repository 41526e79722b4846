// matvec.cu — y = W x for one weight matrix of a decoded group, used by
// examples/run_blocks.rs. One thread per row, summed in a fixed order.

// Half precision to single, exactly (no headers: NVRTC may have none).
__device__ float half_to_float(unsigned int h) {
    unsigned int sign = (h & 0x8000u) << 16;
    unsigned int exponent = (h >> 10) & 0x1Fu;
    unsigned int mantissa = h & 0x3FFu;
    if (exponent == 0u) {
        float magnitude = (float)mantissa * 5.9604644775390625e-8f;  // m * 2^-24
        return sign ? -magnitude : magnitude;
    }
    if (exponent == 31u) {
        return __uint_as_float(sign | 0x7F800000u | (mantissa << 13));
    }
    return __uint_as_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

extern "C" __global__ void matvec(const unsigned char* weights, unsigned int dtype,
                                  unsigned int rows, unsigned int cols,
                                  const float* x, float* y) {
    unsigned int row = blockIdx.x * blockDim.x + threadIdx.x;
    if (row >= rows) {
        return;
    }
    float sum = 0.0f;
    for (unsigned int col = 0; col < cols; col++) {
        unsigned long long index = (unsigned long long)row * cols + col;
        float w;
        if (dtype == 0u) {
            w = ((const float*)weights)[index];
        } else {
            unsigned int bits = ((const unsigned short*)weights)[index];
            w = dtype == 1u ? __uint_as_float(bits << 16) : half_to_float(bits);
        }
        sum = fmaf(w, x[col], sum);
    }
    y[row] = sum;
}
