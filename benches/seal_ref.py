#!/usr/bin/env python3
"""Reference timings of Microsoft SEAL (through PyPI's tenseal), one thread, printed for the
Rust benches to compare with in the same run.

  seal_ref.py ntt   NTT per 60-bit limb at N=4096 and N=8192 (`cargo bench --bench ntt`):
                    lines `seal <forward|inverse> N=<n> <microseconds>`
  seal_ref.py mul   BFV at N=8192 with SEAL's default 218-bit modulus (`cargo bench --bench he`):
                    lines `seal <ctxpt|ctxct|select> N=8192 <microseconds>` (ct×pt both in
                    NTT form; ct×ct includes relinearization; select: per term of a sum of
                    128 ct×pt products)

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
    # the fastest of five batches, as best_of does
    best_fwd = best_inv = float("inf")
    for _ in range(5):
        fwd = inv = 0.0
        for _ in range(reps // 5):
            t0 = time.perf_counter()
            ev.transform_to_ntt_inplace(ct)
            t1 = time.perf_counter()
            ev.transform_from_ntt_inplace(ct)
            t2 = time.perf_counter()
            fwd += t1 - t0
            inv += t2 - t1
        best_fwd = min(best_fwd, fwd / (reps // 5))
        best_inv = min(best_inv, inv / (reps // 5))
    return best_fwd / polys * 1e6, best_inv / polys * 1e6


def best_of(batches, reps, f):
    """Seconds per call of f: the fastest of `batches` timed batches of `reps` calls (the
    Rust side times the same way), after one warm-up call."""
    f()
    best = float("inf")
    for _ in range(batches):
        t0 = time.perf_counter()
        for _ in range(reps):
            f()
        best = min(best, (time.perf_counter() - t0) / reps)
    return best


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
    t_pt = best_of(5, reps // 5, lambda: ev.multiply_plain_inplace(ct_ntt, pt))

    def ct_x_ct():
        ev.multiply_inplace(a, b)
        ev.relinearize_inplace(a, rlk)

    t_ct = best_of(5, max(reps // 100, 2), ct_x_ct)
    # a selection sum: E = 128 ciphertexts (NTT form) times plaintexts, accumulated
    sel = []
    for _ in range(128):
        c = s.Ciphertext()
        enc.encrypt(s.Plaintext("1"), c)
        ev.transform_to_ntt_inplace(c)
        sel.append(c)
    def select():
        acc = s.Ciphertext()
        ev.multiply_plain(sel[0], pt, acc)
        tmp = s.Ciphertext()
        for c in sel[1:]:
            ev.multiply_plain(c, pt, tmp)
            ev.add_inplace(acc, tmp)

    t_sel = best_of(5, 2, select) / len(sel)
    return t_pt * 1e6, t_ct * 1e6, t_sel * 1e6


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
        pt, ct, sel = measure_mul(8192, 400)
        print(f"seal ctxpt N=8192 {pt:.2f}")
        print(f"seal ctxct N=8192 {ct:.2f}")
        print(f"seal select N=8192 {sel:.2f}")
    else:
        sys.exit(f"unknown mode {mode!r} (expected ntt or mul)")


if __name__ == "__main__":
    main()
