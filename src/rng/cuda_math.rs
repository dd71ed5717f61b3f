//! The two CUDA math routines curand's Box-Muller goes through, reproduced bit for bit on the CPU:
//! `logf` (libdevice's `__nv_logf`) and `__sincosf` (FMUL.RZ by 1/2pi, then the special-function unit's
//! MUFU.SIN / MUFU.COS). Only [`super::PhiloxRng`] uses them.

/// libdevice's `__nv_logf` (CUDA's `logf` without fast-math), as `llvm-dis` shows it in libdevice.10.bc:
/// scale subnormals by 2^23; split a = 2^e * m with m in [2/3, 4/3) by integer arithmetic on the bits;
/// a degree-10 polynomial in f = m - 1 (Horner with fused multiply-adds); add e * ln2 with one more FMA.
/// Every operation rounds once, in this order, so `f32::mul_add` (a correctly rounded FMA) gives the
/// GPU's bits.
pub(crate) fn logf(a: f32) -> f32 {
    const POLY: [u32; 8] = [
        0xBE05_5027,
        0x3E10_39F6,
        0xBDF8_CDCC,
        0x3E0F_2955,
        0xBE2A_D8B9,
        0x3E4C_ED0B,
        0xBE7F_FF22,
        0x3EAA_AA78,
    ];
    const LN2: u32 = 0x3F31_7218;
    let (a, bias) = if a < f32::MIN_POSITIVE {
        (a * 8_388_608.0, -23.0)
    } else {
        (a, 0.0)
    };
    let bits = a.to_bits() as i32;
    let e_bits = bits.wrapping_sub(0x3F2A_AAAB) & (0xFF80_0000_u32 as i32);
    let m = f32::from_bits(bits.wrapping_sub(e_bits) as u32);
    let e = (e_bits as f32).mul_add(1.0 / 8_388_608.0, bias);
    let f = m - 1.0;
    let mut p = f32::from_bits(POLY[0]).mul_add(f, f32::from_bits(POLY[1]));
    for c in &POLY[2..] {
        p = p.mul_add(f, f32::from_bits(*c));
    }
    p = p.mul_add(f, -0.5);
    p = (p * f).mul_add(f, f);
    if a == 0.0 {
        return f32::NEG_INFINITY;
    }
    if a.to_bits() >= 0x7F80_0000 {
        // +inf stays +inf; NaN and negative inputs give NaN (a * inf + inf, as libdevice computes it).
        return a.mul_add(f32::INFINITY, f32::INFINITY);
    }
    e.mul_add(f32::from_bits(LN2), p)
}

/// The argument reduction of CUDA's `__sincosf(v)`: FMUL.RZ(v, 1/2pi), the turns that MUFU.SIN and MUFU.COS
/// ([`mufu_sin`]) then take.
pub(crate) fn sincosf_turns(v: f32) -> f32 {
    mul_rz(v, 0.159_154_94)
}

/// float32 multiplication rounded toward zero (the product of two floats is exact in f64).
fn mul_rz(a: f32, b: f32) -> f32 {
    let exact = a as f64 * b as f64;
    let nearest = exact as f32;
    if (nearest as f64).abs() > exact.abs() {
        f32::from_bits(nearest.to_bits() - 1)
    } else {
        nearest
    }
}

/// MUFU.SIN (or MUFU.COS with `cos`) of an angle in turns: the special-function unit's piecewise
/// quadratic interpolation. The angle becomes a count of quarter turns in 2.23 fixed point (truncated,
/// modulo one turn); the two integer bits are the quadrant: cos is sin one quadrant on, odd quadrants
/// mirror the position (ones' complement of the 23 bits), quadrants 2 and 3 negate. The top 6 bits of
/// the position select a segment (A, B, C) of [`SIN_TABLE`]; with x the low 17 bits,
/// res = A * 2^11 + B * x + C * square(x), and the result is res / 2^37 truncated to 24 significant bits.
/// This datapath is the one documented for NVIDIA's Tesla SFU by envytools (nvhw/sfu.c, Marcin
/// Kościelnicki); the H200's unit computes the same.
pub(crate) fn mufu_sin(turns: f32, cos: bool) -> f32 {
    if !turns.is_finite() {
        return f32::NAN;
    }
    let mut negative = turns.is_sign_negative() && !cos;
    // Exact: |turns| has at most 24 significant bits, and the scaled fraction fits an f64.
    let position = (turns.abs() as f64).fract() * (1u64 << 25) as f64;
    let fixed = position.floor() as u32 + if cos { 1 << 23 } else { 0 };
    let quadrant = (fixed >> 23) & 3;
    let mut fraction = fixed & 0x7F_FFFF;
    if quadrant & 1 == 1 {
        fraction = !fraction & 0x7F_FFFF;
    }
    negative ^= quadrant >> 1 == 1;
    let (a, b, c) = SIN_TABLE[(fraction >> 17) as usize];
    let x = (fraction & 0x1_FFFF) as i64;
    let res = ((a as i64) << 11) + b as i64 * x + c as i64 * square(x);
    let magnitude = if res <= 0 {
        0.0
    } else {
        let top = 63 - res.leading_zeros() as i32;
        let shift = (top - 23).max(0);
        // At most 24 significant bits times 2^(shift - 37), a normal power of two: exact.
        (res >> shift) as f32 * f32::from_bits(((shift - 37 + 127) as u32) << 23)
    };
    if negative { -magnitude } else { magnitude }
}

/// The unit's 17-bit squarer: about x^2 / 2^19, each partial product truncated as it is added.
fn square(x: i64) -> i64 {
    (0..17)
        .filter(|i| x & (1 << i) != 0)
        .map(|i| x >> (18 - i))
        .sum::<i64>()
        >> 1
}

/// The unit's 64 segments per quadrant: (A, B, C) ~ (sin, tau/8 cos, -tau^2/64 sin) at each segment's
/// start, in units of 2^-26, 2^-37 and 2^-37 x 2^19 quarter turns. Not computed from the formula: the
/// hardware's values are tuned, and these were derived from the committed CUDA vectors by
/// `scripts/derive_mufu_sin_table.py` (each segment has exactly one integer triple consistent with
/// every observed value; it coincides with the table envytools publishes for Tesla).
#[rustfmt::skip]
const SIN_TABLE: [(i32, i32, i32); 64] = [
    (0x0000000, 0x6489, -14),
    (0x019214e, 0x6482, -48),
    (0x0323ec8, 0x646a, -76),
    (0x04b547c, 0x6444, -110),
    (0x0645e94, 0x640d, -137),
    (0x07d5934, 0x63c8, -171),
    (0x096407a, 0x6373, -201),
    (0x0af109c, 0x630e, -229),
    (0x0c7c5ba, 0x629b, -262),
    (0x0e05c10, 0x6218, -292),
    (0x0f8cfc8, 0x6186, -322),
    (0x1111d24, 0x60e5, -352),
    (0x129405e, 0x6035, -381),
    (0x14135ca, 0x5f76, -410),
    (0x158f9a2, 0x5ea9, -441),
    (0x170884c, 0x5dcd, -470),
    (0x187de2a, 0x5ce2, -497),
    (0x19ef796, 0x5be9, -525),
    (0x1b5d0fe, 0x5ae2, -553),
    (0x1cc66e8, 0x59cd, -581),
    (0x1e2b5d4, 0x58aa, -608),
    (0x1f8ba48, 0x577a, -637),
    (0x20e70ec, 0x563c, -664),
    (0x223d66c, 0x54f0, -688),
    (0x238e760, 0x5398, -715),
    (0x24da0a8, 0x5232, -738),
    (0x261fefc, 0x50c0, -763),
    (0x275ff44, 0x4f42, -790),
    (0x2899e5e, 0x4db7, -812),
    (0x29cd952, 0x4c21, -839),
    (0x2afad20, 0x4a7e, -859),
    (0x2c216e4, 0x48d0, -881),
    (0x2d413ca, 0x4717, -904),
    (0x2e5a104, 0x4553, -926),
    (0x2f6bbe4, 0x4384, -946),
    (0x30761be, 0x41ab, -967),
    (0x3179008, 0x3fc8, -988),
    (0x327444c, 0x3dda, -1004),
    (0x3367c04, 0x3be4, -1025),
    (0x34534f2, 0x39e4, -1043),
    (0x3536cc0, 0x37db, -1059),
    (0x361214e, 0x35c9, -1074),
    (0x36e5064, 0x33b0, -1093),
    (0x37af812, 0x318e, -1107),
    (0x3871658, 0x2f65, -1123),
    (0x392a960, 0x2d34, -1136),
    (0x39daf5c, 0x2afc, -1148),
    (0x3a82698, 0x28be, -1162),
    (0x3b20d7a, 0x2679, -1172),
    (0x3bb6274, 0x242f, -1185),
    (0x3c4241c, 0x21df, -1196),
    (0x3cc511e, 0x1f89, -1203),
    (0x3d3e82c, 0x1d2f, -1213),
    (0x3dae822, 0x1ad0, -1220),
    (0x3e14fda, 0x186e, -1230),
    (0x3e71e78, 0x1607, -1236),
    (0x3ec52fc, 0x139d, -1242),
    (0x3f0eca0, 0x1130, -1247),
    (0x3f4eab2, 0x0ec0, -1250),
    (0x3f84c8e, 0x0c4f, -1258),
    (0x3fb11b2, 0x09db, -1260),
    (0x3fd39ba, 0x0765, -1260),
    (0x3fec43c, 0x04ef, -1263),
    (0x3ffb10c, 0x0278, -1265),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logf_is_within_one_ulp_of_the_true_logarithm() {
        // CUDA documents logf's maximum error as 1 ulp; check it over a dense sweep of (0, 1] and beyond.
        let mut worst = 0u32;
        let mut bits = 0x0000_0001u32;
        while bits < 0x7F80_0000 {
            let a = f32::from_bits(bits);
            let want = (a as f64).ln() as f32;
            let got = logf(a);
            let ulps = (got.to_bits() as i64 - want.to_bits() as i64).unsigned_abs() as u32;
            if want.is_sign_negative() == got.is_sign_negative() {
                worst = worst.max(ulps);
            } else {
                // Crossing zero near 1: compare in absolute terms.
                assert!((got - want).abs() < 1e-7, "{a}: {got} vs {want}");
            }
            bits += 9973;
        }
        assert!(worst <= 1, "worst {worst} ulp");
        assert_eq!(logf(1.0), 0.0);
        assert_eq!(logf(0.0), f32::NEG_INFINITY);
        assert_eq!(logf(f32::INFINITY), f32::INFINITY);
        assert!(logf(-1.0).is_nan());
    }

    #[test]
    fn mufu_sin_cos_stay_within_the_units_documented_error() {
        // The CUDA guide bounds __sinf/__cosf at 2^-21.41 absolute on [-pi, pi].
        let bound = 2f64.powf(-21.41);
        for i in 0..200_000u32 {
            let turns = i as f32 / 200_000.0;
            let angle = std::f64::consts::TAU * turns as f64;
            let (s, c) = (mufu_sin(turns, false), mufu_sin(turns, true));
            assert!(
                (s as f64 - angle.sin()).abs() <= bound,
                "sin at {turns}: {s}"
            );
            assert!(
                (c as f64 - angle.cos()).abs() <= bound,
                "cos at {turns}: {c}"
            );
        }
        assert_eq!(mufu_sin(0.0, false), 0.0);
        assert_eq!(mufu_sin(0.0, true), 1.0);
        assert_eq!(mufu_sin(0.25, false), 1.0);
        assert_eq!(mufu_sin(-0.1, false), -mufu_sin(0.1, false));
        assert_eq!(mufu_sin(1.375, false), mufu_sin(0.375, false));
    }
}
