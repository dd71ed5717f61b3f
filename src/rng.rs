//! Gaussian noise that reproduces the generators diffusers users seed:
//!
//! * [`TorchCpuRng`]: `torch.Generator("cpu").manual_seed(seed)` followed by `torch.randn(shape)` in float32
//!   (ATen's mt19937, `normal_fill` for 16 or more values, the cached Box-Muller pair for fewer).
//! * [`NumpyRng`]: `numpy.random.RandomState(seed).randn(*shape)` (legacy polar Gaussian, float64), cast to
//!   float32 as diffusers' ONNX pipelines do.
//!
//! * [`PhiloxRng`]: `torch.randn(shape, generator=torch.Generator("cuda").manual_seed(seed))` bit for bit, as PyTorch
//!   computes it on an NVIDIA GPU (curand Philox4x32-10, one subsequence per element, Box-Muller on the first
//!   two words), so seeds from A1111 ("RNG: NV") and diffusers-on-GPU carry over without a GPU.
//!
//! All keep their state between draws, so successive calls (initial latents, then the per-step noise of
//! ancestral samplers) follow the same sequence as one Python generator used by diffusers.

/// Which generator a run uses; chosen with `--rng`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RngKind {
    /// `torch.Generator("cpu")`: diffusers' PyTorch pipelines (the default).
    #[default]
    Torch,
    /// `numpy.random.RandomState`: diffusers' ONNX pipelines.
    Numpy,
    /// `torch.Generator("cuda")`: PyTorch on NVIDIA GPUs.
    Philox,
}

impl RngKind {
    /// By the name `--rng` takes: `torch`, `numpy`, `philox`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "torch" => Some(RngKind::Torch),
            "numpy" => Some(RngKind::Numpy),
            "philox" => Some(RngKind::Philox),
            _ => None,
        }
    }

    /// The name `--rng` takes.
    pub fn name(self) -> &'static str {
        match self {
            RngKind::Torch => "torch",
            RngKind::Numpy => "numpy",
            RngKind::Philox => "philox",
        }
    }

    /// A generator of this kind seeded with `seed`.
    pub fn build(self, seed: u64) -> Box<dyn NoiseSource> {
        match self {
            RngKind::Torch => Box::new(TorchCpuRng::new(seed)),
            RngKind::Numpy => Box::new(NumpyRng::new(seed)),
            RngKind::Philox => Box::new(PhiloxRng::new(seed)),
        }
    }
}

mod cuda_math;

/// A source of standard-normal float32 values, drawn in row-major order for a given shape.
pub trait NoiseSource: Send {
    /// Standard normal float32 values for a tensor of `shape`, in the generator's order.
    fn randn(&mut self, shape: &[usize]) -> Vec<f32>;

    /// How many independent generators stand behind this source: 1 for one generator, `n` for
    /// [`PerImage`] (a batch of `n` whose image `i` draws from its own generator).
    fn streams(&self) -> usize {
        1
    }
}

/// One generator per image, as diffusers does when `generator` is a list (`randn_tensor` draws image `i`'s
/// slice of a batch-sized tensor from `generator[i]`) and as A1111 and stable-diffusion.cpp seed batches
/// (image `i` gets `seed + i`): image `i` of a batch is then the image a run of one with its seed gives.
pub struct PerImage {
    generators: Vec<Box<dyn NoiseSource>>,
}

impl PerImage {
    /// `kind` generators seeded `seeds[0]`, `seeds[1]`, ...
    pub fn new(kind: RngKind, seeds: &[u64]) -> Self {
        PerImage {
            generators: seeds.iter().map(|&s| kind.build(s)).collect(),
        }
    }
}

impl NoiseSource for PerImage {
    /// A tensor whose first axis is the batch: slice `i` from generator `i`. Any other shape (there is none
    /// in the pipeline) comes from the first generator, as a single generator would give it.
    fn randn(&mut self, shape: &[usize]) -> Vec<f32> {
        let n = self.generators.len();
        match shape.split_first() {
            Some((&b, rest)) if b == n && n > 1 => {
                let mut one = vec![1];
                one.extend_from_slice(rest);
                let mut out = Vec::with_capacity(shape.iter().product());
                for g in &mut self.generators {
                    out.extend(g.randn(&one));
                }
                out
            }
            _ => match self.generators.first_mut() {
                Some(g) => g.randn(shape),
                None => Vec::new(),
            },
        }
    }

    fn streams(&self) -> usize {
        self.generators.len()
    }
}

/// The 32-bit Mersenne Twister shared by ATen's CPU generator and numpy's `RandomState`.
#[derive(Clone)]
struct Mt19937 {
    state: [u32; 624],
    index: usize,
}

impl Mt19937 {
    fn new(seed: u32) -> Self {
        let mut state = [0u32; 624];
        state[0] = seed;
        for i in 1..624 {
            let prev = state[i - 1];
            state[i] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(i as u32);
        }
        Mt19937 { state, index: 624 }
    }

    fn twist(&mut self) {
        const UPPER: u32 = 0x8000_0000;
        const LOWER: u32 = 0x7fff_ffff;
        for i in 0..624 {
            let y = (self.state[i] & UPPER) | (self.state[(i + 1) % 624] & LOWER);
            let mut next = self.state[(i + 397) % 624] ^ (y >> 1);
            if y & 1 != 0 {
                next ^= 0x9908_b0df;
            }
            self.state[i] = next;
        }
        self.index = 0;
    }

    fn next_u32(&mut self) -> u32 {
        if self.index >= 624 {
            self.twist();
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^= y >> 18;
        y
    }
}

/// `torch.Generator("cpu")`: mt19937 seeded with the low 32 bits of the seed, plus the cached second value
/// of the double-precision Box-Muller pair that ATen keeps in the generator.
#[derive(Clone)]
pub struct TorchCpuRng {
    mt: Mt19937,
    next_double_normal: Option<f64>,
}

impl TorchCpuRng {
    /// `torch.Generator("cpu").manual_seed(seed)`.
    pub fn new(seed: u64) -> Self {
        TorchCpuRng {
            mt: Mt19937::new(seed as u32),
            next_double_normal: None,
        }
    }

    /// `at::uniform_real_distribution<float>(0, 1)`: 24 random bits scaled by 2^-24.
    fn uniform_f32(&mut self) -> f32 {
        (self.mt.next_u32() & ((1 << 24) - 1)) as f32 * (1.0 / (1u32 << 24) as f32)
    }

    /// `at::uniform_real_distribution<double>(0, 1)`: 53 bits from two draws, the first one high.
    fn uniform_f64(&mut self) -> f64 {
        let hi = self.mt.next_u32() as u64;
        let lo = self.mt.next_u32() as u64;
        (((hi << 32) | lo) & ((1u64 << 53) - 1)) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// `at::normal_distribution<double>(0, 1)`, used by `torch.randn` for tensors of fewer than 16 values.
    fn normal_f64(&mut self) -> f64 {
        if let Some(v) = self.next_double_normal.take() {
            return v;
        }
        let u1 = self.uniform_f64();
        let u2 = self.uniform_f64();
        let r = (-2.0 * (-u2).ln_1p()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u1;
        self.next_double_normal = Some(r * theta.sin());
        r * theta.cos()
    }

    /// ATen's `normal_fill_16`: Box-Muller over 16 uniforms, first half cosines, second half sines.
    fn normal_fill_16(data: &mut [f32]) {
        for j in 0..8 {
            let u1 = 1.0 - data[j];
            let u2 = data[j + 8];
            let radius = (-2.0 * u1.ln()).sqrt();
            let theta = (2.0 * std::f64::consts::PI * u2 as f64) as f32;
            data[j] = radius * theta.cos();
            data[j + 8] = radius * theta.sin();
        }
    }
}

impl NoiseSource for TorchCpuRng {
    fn randn(&mut self, shape: &[usize]) -> Vec<f32> {
        let size: usize = shape.iter().product();
        if size < 16 {
            return (0..size).map(|_| self.normal_f64() as f32).collect();
        }
        let mut data: Vec<f32> = (0..size).map(|_| self.uniform_f32()).collect();
        let mut i = 0;
        while i + 16 <= size {
            Self::normal_fill_16(&mut data[i..i + 16]);
            i += 16;
        }
        if !size.is_multiple_of(16) {
            // ATen recomputes the last 16 values from fresh uniforms.
            let tail = &mut data[size - 16..];
            for v in tail.iter_mut() {
                *v = self.uniform_f32();
            }
            Self::normal_fill_16(tail);
        }
        data
    }
}

/// `numpy.random.RandomState(seed)`: mt19937 with `legacy_gauss` (polar method, one value cached).
#[derive(Clone)]
pub struct NumpyRng {
    mt: Mt19937,
    gauss: Option<f64>,
}

impl NumpyRng {
    /// `numpy.random.RandomState(seed)`, for seeds below 2^32 (numpy's range; larger seeds keep their low 32 bits).
    pub fn new(seed: u64) -> Self {
        NumpyRng {
            mt: Mt19937::new(seed as u32),
            gauss: None,
        }
    }

    fn double(&mut self) -> f64 {
        let a = (self.mt.next_u32() >> 5) as f64;
        let b = (self.mt.next_u32() >> 6) as f64;
        (a * 67_108_864.0 + b) / 9_007_199_254_740_992.0
    }

    /// One standard normal draw (numpy's legacy polar method).
    pub fn gauss(&mut self) -> f64 {
        if let Some(g) = self.gauss.take() {
            return g;
        }
        loop {
            let x1 = 2.0 * self.double() - 1.0;
            let x2 = 2.0 * self.double() - 1.0;
            let r2 = x1 * x1 + x2 * x2;
            if r2 < 1.0 && r2 != 0.0 {
                let f = (-2.0 * r2.ln() / r2).sqrt();
                self.gauss = Some(f * x1);
                return f * x2;
            }
        }
    }
}

impl NoiseSource for NumpyRng {
    fn randn(&mut self, shape: &[usize]) -> Vec<f32> {
        let size: usize = shape.iter().product();
        (0..size).map(|_| self.gauss() as f32).collect()
    }
}

/// PyTorch's CUDA generator as `torch.randn` uses it for float32 (ATen `normal_kernel` ->
/// `distribution_elementwise_grid_stride_kernel` with `curand_normal4`).
///
/// Element `i` is produced by thread `i % threads` of the launch, whose curand state is
/// `curand_init(seed, subsequence = thread, offset = philox_offset)`; each call of `curand_normal4` yields
/// four values, of which component `k` goes to element `thread + k * threads` (+ further loop rounds).
/// After each draw the generator's offset advances by 4 per loop round, as `calc_execution_policy` says.
#[derive(Clone)]
pub struct PhiloxRng {
    seed: u64,
    offset: u64,
    /// Threads one launch can hold: SMs x (max threads per SM / 256) x 256. Only tensors larger than this
    /// (over 270k values on an H200) depend on it; SD latents stay far below.
    max_threads: u64,
}

const PHILOX_M0: u32 = 0xD251_1F53;
const PHILOX_M1: u32 = 0xCD9E_8D57;
const PHILOX_W0: u32 = 0x9E37_79B9;
const PHILOX_W1: u32 = 0xBB67_AE85;

fn philox4x32_10(mut ctr: [u32; 4], mut key: [u32; 2]) -> [u32; 4] {
    for round in 0..10 {
        if round > 0 {
            key[0] = key[0].wrapping_add(PHILOX_W0);
            key[1] = key[1].wrapping_add(PHILOX_W1);
        }
        let p0 = PHILOX_M0 as u64 * ctr[0] as u64;
        let p1 = PHILOX_M1 as u64 * ctr[2] as u64;
        ctr = [
            ((p1 >> 32) as u32) ^ ctr[1] ^ key[0],
            p1 as u32,
            ((p0 >> 32) as u32) ^ ctr[3] ^ key[1],
            p0 as u32,
        ];
    }
    ctr
}

/// curand's `_curand_box_muller` for two Philox words: the radius sqrt(-2 ln u) and the angle; its two normals
/// are radius x sin and radius x cos, computed only when used. The constants and the fused multiply-adds are
/// nvcc's; `logf` and `__sincosf` are the GPU's own, emulated bit for bit.
struct BoxMuller {
    radius: f32,
    turns: f32,
}

impl BoxMuller {
    fn new(x: u32, y: u32) -> Self {
        const INV: f32 = 2.328_306_4e-10; // CURAND_2POW32_INV
        const INV_2PI: f32 = 2.328_306_4e-10 * 6.283_185_5; // CURAND_2POW32_INV_2PI
        let u = (x as f32).mul_add(INV, INV / 2.0);
        let v = (y as f32).mul_add(INV_2PI, INV_2PI / 2.0);
        BoxMuller {
            radius: (-2.0 * cuda_math::logf(u)).sqrt(),
            turns: cuda_math::sincosf_turns(v),
        }
    }

    fn sin(&self) -> f32 {
        cuda_math::mufu_sin(self.turns, false) * self.radius
    }

    fn cos(&self) -> f32 {
        cuda_math::mufu_sin(self.turns, true) * self.radius
    }
}

impl PhiloxRng {
    /// `torch.Generator("cuda").manual_seed(seed)`.
    pub fn new(seed: u64) -> Self {
        PhiloxRng {
            seed,
            offset: 0,
            max_threads: 132 * 8 * 256,
        }
    }

    /// The four Philox words `curand_normal4` uses for `thread` after `round` previous calls, at the
    /// generator's current offset.
    fn words(&self, thread: u64, round: u64) -> [u32; 4] {
        // curand_init: counter = (0, 0, subsequence); skipahead(offset) moves offset/4 blocks of four words.
        let block = self.offset / 4 + round;
        let ctr = [
            block as u32,
            (block >> 32) as u32,
            thread as u32,
            (thread >> 32) as u32,
        ];
        let key = [self.seed as u32, (self.seed >> 32) as u32];
        philox4x32_10(ctr, key)
    }

    /// `curand_normal4` for `thread` after `round` previous calls; only the first `used` values are
    /// computed (a small tensor uses just the first sine of each thread), the rest are 0.
    fn normal4(&self, thread: u64, round: u64, used: usize) -> [f32; 4] {
        let w = self.words(thread, round);
        let first = BoxMuller::new(w[0], w[1]);
        let mut v = [first.sin(), 0.0, 0.0, 0.0];
        if used > 1 {
            v[1] = first.cos();
        }
        if used > 2 {
            let second = BoxMuller::new(w[2], w[3]);
            v[2] = second.sin();
            if used > 3 {
                v[3] = second.cos();
            }
        }
        v
    }
}

impl NoiseSource for PhiloxRng {
    fn randn(&mut self, shape: &[usize]) -> Vec<f32> {
        let numel = shape.iter().product::<usize>() as u64;
        if numel == 0 {
            return Vec::new();
        }
        let threads = numel.div_ceil(256).min(self.max_threads / 256) * 256;
        let per_round = threads * 4;
        let rounds = (numel - 1) / per_round + 1;
        let mut out = vec![0f32; numel as usize];
        for round in 0..rounds {
            // GPU threads with a value inside the tensor this round; curand_normal4's values k = 0..3 of
            // thread t land at round * per_round + t + k * threads.
            let start = round * per_round;
            let active = (numel - start).min(threads) as usize;
            let mut values = vec![[0f32; 4]; active];
            let fill = |first_thread: usize, chunk: &mut [[f32; 4]]| {
                for (j, v) in chunk.iter_mut().enumerate() {
                    let thread = (first_thread + j) as u64;
                    let used = ((numel - 1 - start - thread) / threads + 1).min(4) as usize;
                    *v = self.normal4(thread, round, used);
                }
            };
            // The draw is pure per thread: split it over the cores when it is large enough to pay for them.
            let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
            if active >= 8192 && workers > 1 {
                let per = active.div_ceil(workers);
                std::thread::scope(|scope| {
                    for (c, chunk) in values.chunks_mut(per).enumerate() {
                        let fill = &fill;
                        scope.spawn(move || fill(c * per, chunk));
                    }
                });
            } else {
                fill(0, &mut values);
            }
            for (thread, v) in values.iter().enumerate() {
                for (k, value) in v.iter().enumerate() {
                    let i = start + thread as u64 + k as u64 * threads;
                    if i < numel {
                        out[i as usize] = *value;
                    }
                }
            }
        }
        self.offset += rounds * 4;
        out
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn per_image_generators_give_each_image_its_own_stream() {
        let seeds = [7u64, 8, 9];
        for kind in [RngKind::Torch, RngKind::Numpy, RngKind::Philox] {
            let mut batch = PerImage::new(kind, &seeds);
            assert_eq!(batch.streams(), 3);
            // Two draws (initial latents, then a step's noise): image i's values are those of its own seed.
            let first = batch.randn(&[3, 4, 5, 5]);
            let second = batch.randn(&[3, 4, 5, 5]);
            for (i, &seed) in seeds.iter().enumerate() {
                let mut alone = kind.build(seed);
                let (a1, a2) = (alone.randn(&[1, 4, 5, 5]), alone.randn(&[1, 4, 5, 5]));
                assert_eq!(
                    &first[i * 100..(i + 1) * 100],
                    &a1[..],
                    "{kind:?} image {i}"
                );
                assert_eq!(
                    &second[i * 100..(i + 1) * 100],
                    &a2[..],
                    "{kind:?} image {i}"
                );
            }
        }
    }

    use super::*;

    #[test]
    fn torch_small_and_large_draws_match_pytorch() {
        // torch.Generator().manual_seed(0); torch.randn(3); torch.randn(1)
        let mut g = TorchCpuRng::new(0);
        let a = g.randn(&[3]);
        assert_eq!(a, vec![1.540_996_1_f32, -0.293_428_9, -2.178_789_4]);
        assert_eq!(g.randn(&[1]), vec![0.568_431_26_f32]);
    }

    #[test]
    fn philox_known_answers() {
        // Random123's kat_vectors for philox4x32_10.
        assert_eq!(
            philox4x32_10([0; 4], [0; 2]),
            [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]
        );
        assert_eq!(
            philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd]
        );
    }

    #[test]
    fn philox_large_draws_place_all_four_values_of_each_thread() {
        // Over 270336 values, every GPU thread's curand_normal4 is used: value k of thread t lands at
        // t + k * 270336 (PyTorch's unrolled loop), and the values computed lazily equal the full four.
        let t = 270_336;
        let n = 2 * t + 5;
        let mut g = PhiloxRng::new(3);
        let v = g.randn(&[n]);
        let reference = PhiloxRng::new(3);
        for thread in [0, 2, 4, 5, 1000, t - 1] {
            let full = reference.normal4(thread as u64, 0, 4);
            let landed = (thread..n).step_by(t).count();
            for (k, value) in full.iter().enumerate().take(landed) {
                assert_eq!(
                    v[thread + k * t].to_bits(),
                    value.to_bits(),
                    "thread {thread} value {k}"
                );
            }
            assert_eq!(reference.normal4(thread as u64, 0, 1)[0], full[0]);
        }
        assert_eq!(g.offset, 4);
    }

    #[test]
    fn mt19937_reference_value() {
        // The 10000th output of mt19937 seeded with 5489 is 4123659995 (C++ standard, [rand.predef]).
        let mut mt = Mt19937::new(5489);
        let mut v = 0;
        for _ in 0..10000 {
            v = mt.next_u32();
        }
        assert_eq!(v, 4_123_659_995);
    }
}
