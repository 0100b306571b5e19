#!/usr/bin/env python3
"""Times Microsoft SEAL's negacyclic NTT (through PyPI's tenseal) at N=4096 and N=8192 with one
60-bit limb, one thread, for comparison with `cargo bench --bench ntt` in the same run.

Makes its own venv under benches/.venv on first use. Prints one line per measurement:
`seal <forward|inverse> N=<n> <microseconds per limb-NTT>`.
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


def main():
    ensure_venv()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    for n in (4096, 8192):
        f, i = measure(n, 2000)
        print(f"seal forward N={n} {f:.2f}")
        print(f"seal inverse N={n} {i:.2f}")


if __name__ == "__main__":
    main()
