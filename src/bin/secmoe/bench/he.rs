//! `secmoe bench --preset he`: the HE operations the protocols are built on, one thread, each
//! checked by decryption once and timed per operation; where `benches/seal_ref.py` can run
//! (python3 and PyPI's tenseal), Microsoft SEAL is timed in the same run on the same operation
//! (N = 8192, SEAL's default 218-bit modulus) and given as the row's reference. The
//! `keyswitch` rows time what packing results costs per merge under each set with a special
//! prime, the figure the product tilings and the paper method's layouts are chosen by.

use anyhow::{Result, ensure};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use secmoe::backend::{Backend, CpuBackend, NttTable};
use secmoe::he::{
    Ciphertext, HeParams, OperandBank, PlainOperand, Plaintext, SecretKey, Selectors, negacyclic_mod_2_64, select,
};
use secmoe::ring::modp::{Modulus, ntt_primes};

use super::harness::{Reference, Row, op_row, reset_peak_rss, time_us};
use super::report::print_row;

/// Selectors in the `select` row (the E = 128 encrypted scalars).
const SELECT_E: usize = 128;

/// Runs the preset's rows (or those named `only`), printing each and adding it to `rows`.
pub(crate) fn run(only: Option<&str>, rows: &mut Vec<Row>) -> Result<()> {
    let seal = seal_reference();
    let be = CpuBackend::new(1)?;
    let mut rng = StdRng::seed_from_u64(7);
    let wanted = |name: &str| only.is_none_or(|o| o == name);
    let mut push = |mut r: Row, seal_name: &str| {
        r.reference = seal
            .iter()
            .find(|(op, _)| op == seal_name)
            .map(|(_, us)| Reference { name: "SEAL 4 (tenseal)".into(), us_per_op: *us });
        print_row(&r);
        rows.push(r);
    };

    if wanted("ntt") {
        reset_peak_rss();
        let m = Modulus::new(ntt_primes(60, 8192, 1)?[0])?;
        let table = [NttTable::new(8192, m)?];
        let orig: Vec<u64> = (0..8192).map(|_| rng.random_range(0..m.value())).collect();
        let mut round_trip = orig.clone();
        be.ntt_forward(&table, &mut round_trip)?;
        be.ntt_inverse(&table, &mut round_trip)?;
        let mut a = orig.clone();
        let mut result = Ok(());
        let us = time_us(2000, || result = be.ntt_forward(&table, &mut a));
        result?;
        push(op_row("ntt", "cpu", "N=8192, one 60-bit limb, forward".into(), us, round_trip == orig), "forward");
    }

    let p = HeParams::n8192()?;
    let sk = SecretKey::generate(&p, &be, &mut rng)?;
    let n = p.degree();
    let msg: Vec<u64> = (0..n).map(|_| rng.random()).collect();
    let ct = sk.encrypt(&Plaintext::new(&p, msg.clone())?, &be, &mut rng)?;
    let w: Vec<u64> = (0..n).map(|_| rng.random_range(-4096i64..4096) as u64).collect();
    let op = PlainOperand::new(&p, &w, &be)?;
    let shape = |what: &str| format!("{}, {what}", p.name());

    if wanted("ct-pt") {
        reset_peak_rss();
        let mut x = ct.clone();
        x.mul_plain_assign(&p, &op, &be)?;
        let ok = sk.decrypt(&x, &be)?.coeffs() == &negacyclic_mod_2_64(&msg, &w)[..];
        let mut y = ct.clone();
        let mut result = Ok(());
        let us = time_us(400, || result = y.mul_plain_assign(&p, &op, &be));
        result?;
        push(op_row("ct-pt", "cpu", shape("NTT form"), us, ok), "ctxpt");
    }

    if wanted("ct-ct") {
        reset_peak_rss();
        let rlk = sk.relin_key(&be, &mut rng)?;
        let other: Vec<u64> = (0..n).map(|_| rng.random()).collect();
        let ct2 = sk.encrypt(&Plaintext::new(&p, other.clone())?, &be, &mut rng)?;
        let ok = sk.decrypt(&ct.mul(&ct2, &p, &rlk, &be)?, &be)?.coeffs() == &negacyclic_mod_2_64(&msg, &other)[..];
        let mut result = Ok(());
        let us = time_us(20, || result = ct.mul(&ct2, &p, &rlk, &be).map(drop));
        result?;
        push(op_row("ct-ct", "cpu", shape("multiply + relinearize"), us, ok), "ctxct");
    }

    if wanted("select") {
        reset_peak_rss();
        let chosen = 77;
        let sel: Vec<_> = (0..SELECT_E)
            .map(|i| sk.encrypt(&Plaintext::new(&p, vec![u64::from(i == chosen)])?, &be, &mut rng))
            .collect::<Result<_, _>>()?;
        let sel = Selectors::new(&p, &[sel], &be)?;
        let ops: Vec<Vec<u64>> =
            (0..SELECT_E).map(|_| (0..n).map(|_| rng.random_range(-4096i64..4096) as u64).collect()).collect();
        let bank = OperandBank::new(&p, &[ops.iter().map(Vec::as_slice).collect()], &be)?;
        let out = select(&p, &sel, 0, &bank, &be)?;
        ensure!(out.len() == 1, "one output");
        let ok = sk.decrypt(&out[0][0], &be)?.coeffs() == &ops[chosen][..];
        let mut result = Ok(());
        let us = time_us(10, || result = select(&p, &sel, 0, &bank, &be).map(drop)) / SELECT_E as f64;
        result?;
        push(op_row("select", "cpu", shape(&format!("E={SELECT_E}, per term")), us, ok), "select");
    }
    if wanted("keyswitch") {
        for p in [HeParams::linear()?, HeParams::select()?] {
            reset_peak_rss();
            let (us, ok) = merge_us(&p, &be, &mut rng)?;
            push(op_row("keyswitch", "cpu", format!("{}, a merge of two results", p.name()), us, ok), "");
        }
    }
    Ok(())
}

/// Microseconds of one packing merge of two results in NTT form under `p` (X^-1 on one, the
/// sum and difference, an automorphism and its key switch, back in coefficient form), and
/// whether the merged ciphertext decrypts to 2·m_j at coefficient 2a + j for inputs m_0, m_1.
fn merge_us(p: &std::sync::Arc<HeParams>, be: &CpuBackend, rng: &mut StdRng) -> Result<(f64, bool)> {
    let n = p.degree();
    let sk = SecretKey::generate(p, be, rng)?;
    let keys = sk.galois_keys(1, be, rng)?;
    let msgs: Vec<Vec<u64>> = (0..2).map(|_| (0..n).map(|_| rng.random()).collect()).collect();
    let cts: Vec<Ciphertext> =
        msgs.iter().map(|m| sk.encrypt(&Plaintext::new(p, m.clone())?, be, rng)).collect::<Result<_, _>>()?;
    let merge = || keys.pack(p, cts.iter().cloned().map(Some).collect(), be);
    let t_mask = (1u128 << p.plain_bits()) - 1;
    let got = sk.decrypt_wide(&merge()?, be)?;
    let ok = got.iter().enumerate().all(|(i, &g)| g == (2 * msgs[i % 2][i - i % 2] as u128) & t_mask);
    let mut result = Ok(());
    let us = time_us(20, || result = merge().map(drop));
    result?;
    Ok((us, ok))
}

/// SEAL's timings (operation, µs) from `benches/seal_ref.py`: its `ntt` and `mul` modes, or
/// nothing (with the reason printed) where it cannot run.
fn seal_reference() -> Vec<(String, f64)> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/seal_ref.py");
    let mut out = Vec::new();
    for mode in ["ntt", "mul"] {
        match std::process::Command::new("python3").args([script, mode]).output() {
            Ok(o) if o.status.success() => {
                for line in String::from_utf8_lossy(&o.stdout).lines() {
                    if let [_, op, size, us] = line.split_whitespace().collect::<Vec<_>>()[..]
                        && size == "N=8192"
                        && let Ok(us) = us.parse()
                    {
                        out.push((op.to_string(), us));
                    }
                }
            }
            Ok(o) => println!("SEAL reference skipped: {}", String::from_utf8_lossy(&o.stderr).trim()),
            Err(e) => println!("SEAL reference skipped: cannot run python3 ({e})"),
        }
    }
    out
}
