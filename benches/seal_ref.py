#!/usr/bin/env python3
"""Reference timings of Microsoft SEAL (through PyPI's tenseal), one thread, printed for the
Rust benches to compare with in the same run.

  seal_ref.py ntt   NTT per 60-bit limb at N=4096 and N=8192 (`cargo bench --bench ntt`):
                    lines `seal <forward|inverse> N=<n> <microseconds>`
  seal_ref.py mul   BFV at N=8192 with SEAL's default 218-bit modulus (`cargo bench --bench he`):
                    lines `seal <ctxpt|ctxct> N=8192 <microseconds>` (ct×pt both in NTT form;
                    ct×ct includes relinearization)

Makes its own venv under benches/.venv on first use.
"""
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
VENV = os.path.join(HERE, ".venv")


def ensure_venv():
    py = os.path.join(VENV, "bin", "python")
    if not os.path.exists(py):
        subprocess.check_call([sys.executable, "-m", "venv", VENV])
        subprocess.check_call([py, "-m", "pip", "install", "-q", "tenseal"])
    if os.path.realpath(sys.prefix) != os.path.realpath(VENV):
        os.execv(py, [py] + sys.argv)


def measure(n, reps):
    import tenseal.sealapi as s

    parms = s.EncryptionParameters(s.SCHEME_TYPE.BFV)
    parms.set_poly_modulus_degree(n)
    # one 60-bit data limb (plus the special prime for keys)
    parms.set_coeff_modulus(s.CoeffModulus.Create(n, [60, 60]))
    parms.set_plain_modulus(s.PlainModulus.Batching(n, 20))
    ctx = s.SEALContext(parms, True, s.SEC_LEVEL_TYPE.NONE)
    keygen = s.KeyGenerator(ctx)
    pk = s.PublicKey()
    keygen.create_public_key(pk)
    enc = s.Encryptor(ctx, pk)
    ev = s.Evaluator(ctx)
    ct = s.Ciphertext()
    enc.encrypt(s.Plaintext("1x^3 + 2"), ct)
    polys = ct.size() * len(ctx.get_context_data(ct.parms_id()).parms().coeff_modulus())
    fwd = inv = 0.0
    for _ in range(reps):
        t0 = time.perf_counter()
        ev.transform_to_ntt_inplace(ct)
        t1 = time.perf_counter()
        ev.transform_from_ntt_inplace(ct)
        t2 = time.perf_counter()
        fwd += t1 - t0
        inv += t2 - t1
    return fwd / reps / polys * 1e6, inv / reps / polys * 1e6


def measure_mul(n, reps):
    import tenseal.sealapi as s

    parms = s.EncryptionParameters(s.SCHEME_TYPE.BFV)
    parms.set_poly_modulus_degree(n)
    parms.set_coeff_modulus(s.CoeffModulus.BFVDefault(n, s.SEC_LEVEL_TYPE.TC128))
    parms.set_plain_modulus(s.PlainModulus.Batching(n, 20))
    ctx = s.SEALContext(parms, True, s.SEC_LEVEL_TYPE.TC128)
    keygen = s.KeyGenerator(ctx)
    pk = s.PublicKey()
    keygen.create_public_key(pk)
    rlk = s.RelinKeys()
    keygen.create_relin_keys(rlk)
    enc = s.Encryptor(ctx, pk)
    ev = s.Evaluator(ctx)
    a, b = s.Ciphertext(), s.Ciphertext()
    enc.encrypt(s.Plaintext("1x^3 + 2"), a)
    enc.encrypt(s.Plaintext("5x^1 + 1"), b)
    pt = s.Plaintext("3x^2 + 7")
    ev.transform_to_ntt_inplace(pt, a.parms_id())
    ct_ntt = s.Ciphertext()
    ev.transform_to_ntt(a, ct_ntt)
    # In place on the same ciphertext each time (the values stop decrypting; the work does not change).
    t0 = time.perf_counter()
    for _ in range(reps):
        ev.multiply_plain_inplace(ct_ntt, pt)
    t_pt = (time.perf_counter() - t0) / reps
    ct_reps = max(reps // 20, 5)
    t0 = time.perf_counter()
    for _ in range(ct_reps):
        ev.multiply_inplace(a, b)
        ev.relinearize_inplace(a, rlk)
    t_ct = (time.perf_counter() - t0) / ct_reps
    return t_pt * 1e6, t_ct * 1e6


def main():
    ensure_venv()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mode = sys.argv[1] if len(sys.argv) > 1 else "ntt"
    if mode == "ntt":
        for n in (4096, 8192):
            f, i = measure(n, 2000)
            print(f"seal forward N={n} {f:.2f}")
            print(f"seal inverse N={n} {i:.2f}")
    elif mode == "mul":
        pt, ct = measure_mul(8192, 400)
        print(f"seal ctxpt N=8192 {pt:.2f}")
        print(f"seal ctxct N=8192 {ct:.2f}")
    else:
        sys.exit(f"unknown mode {mode!r} (expected ntt or mul)")


if __name__ == "__main__":
    main()
