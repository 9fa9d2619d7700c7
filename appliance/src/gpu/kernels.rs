//! CUDA C source of the preprocessing kernels, compiled once at start-up with NVRTC.
//!
//! Written by hand for this crate. Every kernel mirrors a CPU reference in
//! `crate::preprocess` (or the assembler's HU rescale) operation for operation: the float
//! arithmetic uses the `__f*_rn` / `__d*_rn` intrinsics so the compiler cannot contract
//! `a + b * c` into an FMA, which makes the GPU results bit-identical to the CPU's (Rust never
//! contracts either). Per-axis interpolation taps are computed on the host in f64 by the
//! same formulas the CPU uses and uploaded as small tables, so sample positions agree exactly.
//!
//! Bandwidth notes: elementwise kernels handle 4 consecutive elements per thread with one
//! 8-byte load and one 8/16-byte store (device buffers are allocated 256-byte aligned and
//! always passed from offset 0); the gather kernels run on a 2-D grid (slice = blockIdx.y) so
//! index math is one 32-bit division; read-only inputs go through `__ldg` (non-coherent
//! cache); the product's kernels use no atomics (`mask_scan`, below, one per row) and write
//! every output exactly once. The product runs `resample_input` on the 1-channel coarse
//! grid, the tuned `resample_input_x4` (4 x-outputs per thread) on the 4-channel fine grid,
//! and `fine_to_native_rows` (one warp per box row, candidates compacted through shared
//! memory) for the labels (`gpu::GatherKernels::Mixed`); the other sets (one output per
//! thread throughout; the 256-voxel-chunk compaction `fine_to_native_compact`, also the
//! fallback for rows wider than 512) stay for the bench's comparison. `mask_scan` +
//! `mask_label` (set `TwoPass`) label in two passes; written after the last GPU run, they
//! await their first measurement and parity run on a GPU.

/// Kernel names, in the order [`SOURCE`] defines them.
pub const RESCALE_S16: &str = "rescale_s16";
pub const RESCALE_U16: &str = "rescale_u16";
pub const HU_TO_UNIT: &str = "hu_to_unit";
pub const RESAMPLE_INPUT: &str = "resample_input";
pub const FINE_TO_NATIVE: &str = "fine_to_native";
pub const RESAMPLE_INPUT_X4: &str = "resample_input_x4";
pub const FINE_TO_NATIVE_COMPACT: &str = "fine_to_native_compact";
pub const FINE_TO_NATIVE_ROWS: &str = "fine_to_native_rows";
pub const MASK_SCAN: &str = "mask_scan";
pub const MASK_LABEL: &str = "mask_label";
/// Most blocks `mask_label` is launched with (it strides over the candidate list).
pub const MASK_LABEL_MAX_BLOCKS: usize = 2048;
/// Widest box row `fine_to_native_rows` takes (16 loads of 32 per lane).
pub const MASK_ROW_MAX: usize = 512;

/// Box voxels one warp of `fine_to_native_compact` scans (8 iterations of 32 lanes).
pub const MASK_WARP_VOXELS: usize = 32 * 8;

/// Threads per block for every kernel.
pub const BLOCK: u32 = 256;
/// Elements handled by one thread in the elementwise kernels.
pub const PER_THREAD: usize = 4;

pub const SOURCE: &str = r#"
typedef unsigned long long u64;

// ---- HU rescale: raw stored value -> round(raw * slope + intercept), saturated to int16 ----
// int_path: slope == 1 and the intercept is a small integer, so the double arithmetic is exact
// in integers; both paths give identical results (the host chooses).
__device__ __forceinline__ short rescale_one(int v, double slope, double intercept,
                                             int int_path, int int_offset) {
    if (int_path) {
        int r = v + int_offset;
        return (short)min(max(r, -32768), 32767);
    }
    double x = __dadd_rn(__dmul_rn((double)v, slope), intercept);
    x = round(x);  // half away from zero, like Rust's f64::round
    x = fmin(fmax(x, -32768.0), 32767.0);
    return (short)x;
}

template <typename T, typename T4>
__device__ __forceinline__ void rescale_body(const T* __restrict__ raw, short* __restrict__ hu,
                                             u64 n, double slope, double intercept,
                                             int int_path, int int_offset) {
    u64 t = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    u64 i = t * 4;
    if (i + 3 < n) {
        T4 v = __ldg(reinterpret_cast<const T4*>(raw) + t);
        short4 o;
        o.x = rescale_one(v.x, slope, intercept, int_path, int_offset);
        o.y = rescale_one(v.y, slope, intercept, int_path, int_offset);
        o.z = rescale_one(v.z, slope, intercept, int_path, int_offset);
        o.w = rescale_one(v.w, slope, intercept, int_path, int_offset);
        reinterpret_cast<short4*>(hu)[t] = o;
    } else {
        for (; i < n; ++i) {
            hu[i] = rescale_one(__ldg(raw + i), slope, intercept, int_path, int_offset);
        }
    }
}

extern "C" __global__ void __launch_bounds__(256) rescale_s16(const short* __restrict__ raw, short* __restrict__ hu,
                                       u64 n, double slope, double intercept,
                                       int int_path, int int_offset) {
    rescale_body<short, short4>(raw, hu, n, slope, intercept, int_path, int_offset);
}

extern "C" __global__ void __launch_bounds__(256) rescale_u16(const unsigned short* __restrict__ raw,
                                       short* __restrict__ hu, u64 n, double slope,
                                       double intercept, int int_path, int int_offset) {
    rescale_body<unsigned short, ushort4>(raw, hu, n, slope, intercept, int_path, int_offset);
}

// ---- HU clip + normalise: clamp(hu, lo, hi) / scale, as f32 ----
__device__ __forceinline__ float unit_one(short v, float lo, float hi, float scale) {
    return __fdiv_rn(fminf(fmaxf((float)v, lo), hi), scale);
}

extern "C" __global__ void __launch_bounds__(256) hu_to_unit(const short* __restrict__ hu, float* __restrict__ out,
                                      u64 n, float lo, float hi, float scale) {
    u64 t = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    u64 i = t * 4;
    if (i + 3 < n) {
        short4 v = __ldg(reinterpret_cast<const short4*>(hu) + t);
        float4 o;
        o.x = unit_one(v.x, lo, hi, scale);
        o.y = unit_one(v.y, lo, hi, scale);
        o.z = unit_one(v.z, lo, hi, scale);
        o.w = unit_one(v.w, lo, hi, scale);
        reinterpret_cast<float4*>(out)[t] = o;
    } else {
        for (; i < n; ++i) out[i] = unit_one(__ldg(hu + i), lo, hi, scale);
    }
}

// ---- Trilinear resampling onto a model grid (+ clip/scale, + coordinate channels) ----
// taps: one int4 per model index, z axis (d entries), then y (h), then x (w):
//   {i0, i1, bits(w1), bits(coord)}; i0/i1 = -1 where the tap falls outside the volume
//   (that corner takes the pad value), w1 = weight of i1, coord = coordinate channel value.
__device__ __forceinline__ float lerp_rn(float a, float b, float t) {
    return __fadd_rn(a, __fmul_rn(__fsub_rn(b, a), t));
}

__device__ __forceinline__ float sample(const short* __restrict__ hu, int nh, int nw,
                                        int z, int y, int x, float pad) {
    return (z >= 0 && y >= 0 && x >= 0) ? (float)__ldg(hu + ((u64)z * nh + y) * nw + x) : pad;
}

// Launch: grid (ceil(h*w / 256), d); blockIdx.y is the output slice, so one 32-bit division
// gives (y, x) (64-bit division is emulated and was the kernel's main cost).
extern "C" __global__ void __launch_bounds__(256) resample_input(const short* __restrict__ hu, int nh, int nw,
                                          const int4* __restrict__ taps, int d, int h, int w,
                                          int channels, float pad, float lo, float hi,
                                          float scale, float* __restrict__ out) {
    unsigned int hw = (unsigned int)h * w;
    unsigned int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= hw) return;
    int z = blockIdx.y;
    int y = (int)(r / w);
    int x = (int)(r - (unsigned int)y * w);
    u64 plane = (u64)d * hw;
    u64 idx = (u64)z * hw + r;
    int4 tz = __ldg(taps + z);
    int4 ty = __ldg(taps + d + y);
    int4 tx = __ldg(taps + d + h + x);
    float wz = __int_as_float(tz.z), wy = __int_as_float(ty.z), wx = __int_as_float(tx.z);
    // Same order as the CPU: along x, then y, then z.
    float a00 = lerp_rn(sample(hu, nh, nw, tz.x, ty.x, tx.x, pad),
                        sample(hu, nh, nw, tz.x, ty.x, tx.y, pad), wx);
    float a01 = lerp_rn(sample(hu, nh, nw, tz.x, ty.y, tx.x, pad),
                        sample(hu, nh, nw, tz.x, ty.y, tx.y, pad), wx);
    float a10 = lerp_rn(sample(hu, nh, nw, tz.y, ty.x, tx.x, pad),
                        sample(hu, nh, nw, tz.y, ty.x, tx.y, pad), wx);
    float a11 = lerp_rn(sample(hu, nh, nw, tz.y, ty.y, tx.x, pad),
                        sample(hu, nh, nw, tz.y, ty.y, tx.y, pad), wx);
    float v = lerp_rn(lerp_rn(a00, a01, wy), lerp_rn(a10, a11, wy), wz);
    out[idx] = __fdiv_rn(fminf(fmaxf(v, lo), hi), scale);
    if (channels == 4) {
        out[plane + idx] = __int_as_float(tz.w);
        out[2 * plane + idx] = __int_as_float(ty.w);
        out[3 * plane + idx] = __int_as_float(tx.w);
    }
}

// ---- Fine-grid class probabilities -> native label mask, over the crop's native box ----
// The box is the native index range [bz0, bz0+bd) x [by0, by0+bh) x [bx0, bx0+bw) covered by
// the crop; ntaps holds one int4 per box index (z: bd entries, then y: bh, then x: bw):
//   {i0, i1, bits(w), 0} into the fine grid (clamped to its edge, as the CPU does).
// Output: one label per box voxel (0 where HU < threshold); argmax ties go to the lower class.
// The 8 trilinear corner weights, in the CPU's order and with its products.
__device__ __forceinline__ void corner_weights(float wz, float wy, float wx, float cw[8]) {
    float uz = __fsub_rn(1.0f, wz), uy = __fsub_rn(1.0f, wy), ux = __fsub_rn(1.0f, wx);
    cw[0] = __fmul_rn(__fmul_rn(uz, uy), ux); cw[1] = __fmul_rn(__fmul_rn(uz, uy), wx);
    cw[2] = __fmul_rn(__fmul_rn(uz, wy), ux); cw[3] = __fmul_rn(__fmul_rn(uz, wy), wx);
    cw[4] = __fmul_rn(__fmul_rn(wz, uy), ux); cw[5] = __fmul_rn(__fmul_rn(wz, uy), wx);
    cw[6] = __fmul_rn(__fmul_rn(wz, wy), ux); cw[7] = __fmul_rn(__fmul_rn(wz, wy), wx);
}

// Corner weights (order and products exactly as the CPU) and 32-bit offsets of the 8 corners
// within one class plane (the host checks plane < 2^32).
__device__ __forceinline__ void corners(const int4* __restrict__ ntaps, int bd, int bh,
                                        int zi, int yi, int xi, int h, int w,
                                        float cw[8], unsigned int base[8]) {
    int4 tz = __ldg(ntaps + zi), ty = __ldg(ntaps + bd + yi), tx = __ldg(ntaps + bd + bh + xi);
    corner_weights(__int_as_float(tz.z), __int_as_float(ty.z), __int_as_float(tx.z), cw);
    unsigned int r00 = ((unsigned int)tz.x * h + ty.x) * w, r01 = ((unsigned int)tz.x * h + ty.y) * w;
    unsigned int r10 = ((unsigned int)tz.y * h + ty.x) * w, r11 = ((unsigned int)tz.y * h + ty.y) * w;
    base[0] = r00 + tx.x; base[1] = r00 + tx.y; base[2] = r01 + tx.x; base[3] = r01 + tx.y;
    base[4] = r10 + tx.x; base[5] = r10 + tx.y; base[6] = r11 + tx.x; base[7] = r11 + tx.y;
}

// K known at compile time: one accumulator per class, corners outer, so all 8*K gathers can
// be in flight at once. Each class still sums its corners in the CPU's order (bit-identical).
template <int K>
__device__ __forceinline__ unsigned char argmax_k(const float* __restrict__ probs, u64 plane,
                                                  const float cw[8], const unsigned int base[8]) {
    float p[K];
#pragma unroll
    for (int c = 0; c < K; ++c) p[c] = 0.0f;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
#pragma unroll
        for (int c = 0; c < K; ++c)
            p[c] = __fadd_rn(p[c], __fmul_rn(cw[j], __ldg(probs + (u64)c * plane + base[j])));
    }
    int best = 0;
#pragma unroll
    for (int c = 1; c < K; ++c)
        if (p[c] > p[best]) best = c;
    return (unsigned char)best;
}

// Any K: classes outer (same sums, fewer loads in flight).
__device__ __forceinline__ unsigned char argmax_any(const float* __restrict__ probs, u64 plane,
                                                    int k, const float cw[8],
                                                    const unsigned int base[8]) {
    int best = 0;
    float best_p = 0.0f;
    for (int c = 0; c < k; ++c) {
        const float* pc = probs + (u64)c * plane;
        float p = 0.0f;
#pragma unroll
        for (int j = 0; j < 8; ++j) p = __fadd_rn(p, __fmul_rn(cw[j], __ldg(pc + base[j])));
        if (c == 0 || p > best_p) {
            best = c;
            best_p = p;
        }
    }
    return (unsigned char)best;
}

// The label of box voxel (zi, yi, xi): its 8 fine-grid corners and weights, then the argmax of
// the K interpolated probabilities (K specialised up to 6).
__device__ __forceinline__ unsigned char label_at(const int4* __restrict__ ntaps,
                                                  const float* __restrict__ probs, int k, int d,
                                                  int h, int w, int bd, int bh,
                                                  int zi, int yi, int xi) {
    float cw[8];
    unsigned int base[8];
    corners(ntaps, bd, bh, zi, yi, xi, h, w, cw, base);
    u64 plane = (u64)d * h * w;
    switch (k) {
        case 2: return argmax_k<2>(probs, plane, cw, base);
        case 3: return argmax_k<3>(probs, plane, cw, base);
        case 4: return argmax_k<4>(probs, plane, cw, base);
        case 5: return argmax_k<5>(probs, plane, cw, base);
        case 6: return argmax_k<6>(probs, plane, cw, base);
        default: return argmax_any(probs, plane, k, cw, base);
    }
}

// Launch: grid (ceil(bh*bw / 256), bd), one thread per box voxel; blockIdx.y is the box slice.
extern "C" __global__ void __launch_bounds__(256) fine_to_native(const short* __restrict__ hu, int nh, int nw,
                                          const int4* __restrict__ ntaps,
                                          const float* __restrict__ probs, int k, int d, int h,
                                          int w, short threshold, int bz0, int by0, int bx0,
                                          int bd, int bh, int bw,
                                          unsigned char* __restrict__ out) {
    unsigned int bhw = (unsigned int)bh * bw;
    unsigned int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= bhw) return;
    int zi = blockIdx.y;
    int yi = (int)(r / bw);
    int xi = (int)(r - (unsigned int)yi * bw);
    u64 o = (u64)zi * bhw + r;
    short v = __ldg(hu + ((u64)(bz0 + zi) * nh + (by0 + yi)) * nw + (bx0 + xi));
    if (v < threshold) {
        out[o] = 0;
        return;
    }
    out[o] = label_at(ntaps, probs, k, d, h, w, bd, bh, zi, yi, xi);
}

// ---- Tuned variants (the defaults; the kernels above stay as the bench's baseline) ----

// Resampling, N = 4 consecutive x outputs per thread (2 measured the same): the z/y taps and
// the four row offsets are computed once for the N, there are N independent gather chains in
// flight per thread, and when w % N == 0 every channel is written with one 16-byte store.
// Same arithmetic, in the same order, as resample_input (bit-identical).
// Launch: grid (ceil(h * ceil(w/N) / 256), d).
extern "C" __global__ void __launch_bounds__(256) resample_input_x4(const short* __restrict__ hu, int nh, int nw,
                                          const int4* __restrict__ taps, int d, int h, int w,
                                          int channels, float pad, float lo, float hi,
                                          float scale, float* __restrict__ out) {
    const int N = 4;
    unsigned int wq = ((unsigned int)w + N - 1) / N;
    unsigned int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= (unsigned int)h * wq) return;
    int z = blockIdx.y;
    int y = (int)(r / wq);
    int x0 = (int)(r - (unsigned int)y * wq) * N;
    unsigned int hw = (unsigned int)h * w;
    u64 plane = (u64)d * hw;
    u64 idx = (u64)z * hw + (unsigned int)y * w + x0;
    int4 tz = __ldg(taps + z);
    int4 ty = __ldg(taps + d + y);
    float wz = __int_as_float(tz.z), wy = __int_as_float(ty.z);
    // Row offsets of the four (z, y) corners; -1 where the row lies outside the volume.
    long long r00 = (tz.x >= 0 && ty.x >= 0) ? ((long long)tz.x * nh + ty.x) * nw : -1;
    long long r01 = (tz.x >= 0 && ty.y >= 0) ? ((long long)tz.x * nh + ty.y) * nw : -1;
    long long r10 = (tz.y >= 0 && ty.x >= 0) ? ((long long)tz.y * nh + ty.x) * nw : -1;
    long long r11 = (tz.y >= 0 && ty.y >= 0) ? ((long long)tz.y * nh + ty.y) * nw : -1;
    float v[N], cx[N];
#pragma unroll
    for (int j = 0; j < N; ++j) {
        int x = x0 + j;
        if (x >= w) { v[j] = 0.0f; cx[j] = 0.0f; continue; }
        int4 tx = __ldg(taps + d + h + x);
        float wx = __int_as_float(tx.z);
        cx[j] = __int_as_float(tx.w);
#define S(row, xi) (((row) >= 0 && (xi) >= 0) ? (float)__ldg(hu + (row) + (xi)) : pad)
        float a00 = lerp_rn(S(r00, tx.x), S(r00, tx.y), wx);
        float a01 = lerp_rn(S(r01, tx.x), S(r01, tx.y), wx);
        float a10 = lerp_rn(S(r10, tx.x), S(r10, tx.y), wx);
        float a11 = lerp_rn(S(r11, tx.x), S(r11, tx.y), wx);
#undef S
        float s = lerp_rn(lerp_rn(a00, a01, wy), lerp_rn(a10, a11, wy), wz);
        v[j] = __fdiv_rn(fminf(fmaxf(s, lo), hi), scale);
    }
    float cz = __int_as_float(tz.w), cy = __int_as_float(ty.w);
    if (w % N == 0) {
        // idx and plane are multiples of 4, out is 256-byte aligned: one vector store each.
        reinterpret_cast<float4*>(out + idx)[0] = make_float4(v[0], v[1], v[2], v[3]);
        if (channels == 4) {
            reinterpret_cast<float4*>(out + plane + idx)[0] = make_float4(cz, cz, cz, cz);
            reinterpret_cast<float4*>(out + 2 * plane + idx)[0] = make_float4(cy, cy, cy, cy);
            reinterpret_cast<float4*>(out + 3 * plane + idx)[0] = make_float4(cx[0], cx[1], cx[2], cx[3]);
        }
    } else {
        int n = min(N, w - x0);
        for (int j = 0; j < n; ++j) {
            out[idx + j] = v[j];
            if (channels == 4) {
                out[plane + idx + j] = cz;
                out[2 * plane + idx + j] = cy;
                out[3 * plane + idx + j] = cx[j];
            }
        }
    }
}

// Appends `value` to a warp's list for the lanes where `cand` holds, in lane order; returns
// the list's new length (the same on every lane). All 32 lanes must call it.
__device__ __forceinline__ unsigned int warp_append(unsigned short* list, unsigned int count,
                                                    bool cand, unsigned short value, int lane) {
    unsigned int ballot = __ballot_sync(0xffffffffu, cand);
    if (cand) list[count + __popc(ballot & ((1u << lane) - 1u))] = value;
    return count + __popc(ballot);
}

// Scans one box row for the row kernels: loads its HU (up to 512 values, every load in
// flight), writes 0 to `orow` where HU < threshold, and lists the candidates' x in `list` in
// order; returns how many (the same on every lane), the list visible to the whole warp. All 32
// lanes must call it; bw <= 512.
__device__ __forceinline__ unsigned int scan_row(const short* __restrict__ row, int bw,
                                                 short threshold,
                                                 unsigned char* __restrict__ orow,
                                                 unsigned short* list, int lane) {
    short v[16];
#pragma unroll
    for (int j = 0; j < 16; ++j) {
        int xi = j * 32 + lane;
        v[j] = xi < bw ? __ldg(row + xi) : (short)-32768;
    }
    unsigned int count = 0;
#pragma unroll
    for (int j = 0; j < 16; ++j) {
        if (j * 32 >= bw) break;  // uniform per warp
        int xi = j * 32 + lane;
        bool cand = xi < bw && v[j] >= threshold;
        if (xi < bw && !cand) orow[xi] = 0;
        count = warp_append(list, count, cand, (unsigned short)xi, lane);
    }
    __syncwarp();
    return count;
}

// Labels with warp-level compaction: candidates (HU >= threshold) are a few per cent of the
// box, so with one thread per voxel nearly every warp ran the 8*K-gather path for one or two
// lanes. Here each warp scans 256 consecutive box voxels (coalesced HU loads, zeros written
// for non-candidates), collects its candidates in shared memory with a ballot, then labels
// them 32 at a time with all lanes busy. Same per-voxel arithmetic as fine_to_native.
// Launch: 1-D grid of ceil(box voxels / 2048) blocks of 256; box voxels < 2^32.
extern "C" __global__ void __launch_bounds__(256) fine_to_native_compact(const short* __restrict__ hu, int nh, int nw,
                                          const int4* __restrict__ ntaps,
                                          const float* __restrict__ probs, int k, int d, int h,
                                          int w, short threshold, int bz0, int by0, int bx0,
                                          int bd, int bh, int bw,
                                          unsigned char* __restrict__ out) {
    __shared__ unsigned short list[8][256];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    unsigned int bhw = (unsigned int)bh * bw;
    unsigned int total = (unsigned int)bd * bhw;
    unsigned int base = (blockIdx.x * 8u + warp) * 256u;
    if (base >= total) return;  // uniform per warp
    unsigned int count = 0;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
        unsigned int v = base + j * 32 + lane;
        bool cand = false;
        if (v < total) {
            unsigned int zi = v / bhw, rr = v - zi * bhw;
            unsigned int yi = rr / bw, xi = rr - yi * bw;
            short hv = __ldg(hu + ((u64)(bz0 + zi) * nh + (by0 + yi)) * nw + (bx0 + xi));
            cand = hv >= threshold;
            if (!cand) out[v] = 0;
        }
        count = warp_append(list[warp], count, cand, (unsigned short)(j * 32 + lane), lane);
    }
    __syncwarp();
    for (unsigned int i = lane; i < count; i += 32) {
        unsigned int v = base + list[warp][i];
        unsigned int zi = v / bhw, rr = v - zi * bhw;
        unsigned int yi = rr / bw, xi = rr - yi * bw;
        out[v] = label_at(ntaps, probs, k, d, h, w, bd, bh, (int)zi, (int)yi, (int)xi);
    }
}

// Labels with per-row compaction: one warp per box row, so no index division; the row's HU
// values (up to 512) are loaded with every load in flight, zeros are written for
// non-candidates, the row's candidates are collected in shared memory with a ballot and then
// labelled with every lane busy. Same per-voxel arithmetic as fine_to_native.
// Launch: grid (ceil(bh / 8), bd), block 256; bw <= 512.
extern "C" __global__ void __launch_bounds__(256) fine_to_native_rows(const short* __restrict__ hu, int nh, int nw,
                                          const int4* __restrict__ ntaps,
                                          const float* __restrict__ probs, int k, int d, int h,
                                          int w, short threshold, int bz0, int by0, int bx0,
                                          int bd, int bh, int bw,
                                          unsigned char* __restrict__ out) {
    __shared__ unsigned short list[8][512];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int yi = blockIdx.x * 8 + warp, zi = blockIdx.y;
    if (yi >= bh) return;  // uniform per warp
    const short* row = hu + ((u64)(bz0 + zi) * nh + (by0 + yi)) * nw + bx0;
    unsigned char* orow = out + ((u64)zi * bh + yi) * bw;
    unsigned int count = scan_row(row, bw, threshold, orow, list[warp], lane);
    for (unsigned int i = lane; i < count; i += 32) {
        int xi = list[warp][i];
        orow[xi] = label_at(ntaps, probs, k, d, h, w, bd, bh, zi, yi, xi);
    }
}


// ---- Two-pass labels: a streaming pass, then the candidates alone with every lane busy ----
// In a CT 2-3 % of the box are candidates, a handful per row, so labelling them per row (as
// fine_to_native_rows does) kept few of a warp's 32 lanes busy in the costly part (8*K
// gathers each). Pass 1, mask_scan (one warp per box row, few registers), writes the zeros and
// appends the row's candidates, as box offsets, to one list (one atomicAdd per row); pass 2,
// mask_label, labels the list with every lane busy. The list's order varies from run to run;
// the labels do not (each is written to its own voxel, with the same arithmetic).
// mask_scan launch: grid (ceil(bh / 8), bd), block 256; bw <= 512; box voxels < 2^32;
// *count zeroed before.
extern "C" __global__ void __launch_bounds__(256) mask_scan(const short* __restrict__ hu, int nh, int nw,
                                          short threshold, int bz0, int by0, int bx0,
                                          int bd, int bh, int bw,
                                          unsigned char* __restrict__ out,
                                          unsigned int* __restrict__ cands,
                                          unsigned int* __restrict__ count) {
    __shared__ unsigned short list[8][512];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int yi = blockIdx.x * 8 + warp, zi = blockIdx.y;
    if (yi >= bh) return;  // uniform per warp
    const short* row = hu + ((u64)(bz0 + zi) * nh + (by0 + yi)) * nw + bx0;
    unsigned int rbase = ((unsigned int)zi * bh + yi) * bw;
    unsigned char* orow = out + rbase;
    unsigned int n = scan_row(row, bw, threshold, orow, list[warp], lane);
    if (n == 0) return;  // uniform per warp
    unsigned int base = 0;
    if (lane == 0) base = atomicAdd(count, n);
    base = __shfl_sync(0xffffffffu, base, 0);
    for (unsigned int i = lane; i < n; i += 32) cands[base + i] = rbase + list[warp][i];
}

// mask_label launch: any grid (grid-stride over *count), block 256.
extern "C" __global__ void __launch_bounds__(256) mask_label(const int4* __restrict__ ntaps,
                                          const float* __restrict__ probs, int k, int d, int h,
                                          int w, int bd, int bh, int bw,
                                          const unsigned int* __restrict__ cands,
                                          const unsigned int* __restrict__ count,
                                          unsigned char* __restrict__ out) {
    unsigned int n = *count;
    unsigned int bhw = (unsigned int)bh * bw;
    for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += gridDim.x * blockDim.x) {
        unsigned int v = __ldg(cands + i);
        unsigned int zi = v / bhw, r = v - zi * bhw;
        unsigned int yi = r / bw, xi = r - yi * bw;
        out[v] = label_at(ntaps, probs, k, d, h, w, bd, bh, (int)zi, (int)yi, (int)xi);
    }
}
"#;
