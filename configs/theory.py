"""The Xue et al. (2023) linear-model simulator (cl_jax/theory.py; docs/method.md §4).

  python -m cl_jax.theory --config=configs/theory.py --workdir=runs/theory [--config.p=8 ...]

Defaults: d ≫ n; 4 easy class-irrelevant features stronger than the class feature
(a_easy² = 4 > a_class² = 1); a salient subclass feature (a_sub² = 6.25, e.g. "fluffy"); embedding
size p = 5 = num_easy + 1, small enough for UCL to drop the class. `joint_a_sub` reruns claim 5
with a weaker subclass (a_sub = 0.7, 1.5) to show where the joint loss stops keeping it.
Claim 1 runs in the regime of `dynamics` (its fields replace the others for that claim).
"""
import ml_collections


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  # Data: x = a_class·y·e1 + a_sub·s·e2 + a_easy·Σ z_j e_{2+j} + ξ, ‖ξ‖ ≈ noise.
  c.n = 64                  # training examples
  c.balanced_labels = False  # True: (class, subclass) cycle exactly (no subclass in class means)
  c.d = 512                 # input dimension (d ≫ n)
  c.a_class = 1.0
  c.a_sub = 2.5
  c.num_easy = 4            # class-irrelevant easy features z_j
  c.a_easy = 2.0
  c.noise = 2.0
  c.augmentation = "imperfect"  # imperfect: views share z; good: z redrawn per view
  # Model and losses.
  c.p = 5                   # embedding size
  c.beta = 0.5              # joint = β·SCL + (1−β)·UCL
  c.init_scale = 1e-3       # std of the entries of W at initialisation
  # (S)GD.
  c.lr = 0.02
  c.steps = 3000
  c.record_every = 50
  c.batch_size = 256        # SGD: pairs per step
  # Measurement and sweeps.
  c.num_probe = 2000        # fresh samples to fit the probes, and as many to test them
  c.embedding_sizes = (1, 2, 4, 5, 6, 8, 16)
  c.diverse_num_easy = (4, 16, 32)  # claim 4b at the largest embedding size
  c.joint_a_sub = (0.7, 1.5, 2.5)   # claim 5 regimes
  c.num_seeds = 3
  c.claim2_sizes = (64, 256, 1024, 4096)  # claim 2 against the number of training examples n
  c.claim2_num_seeds = 5
  # Claim 1 (SCL learns, then unlearns the subclass) in its own regime: these fields replace the
  # ones above for that claim. A weak subclass, no easy features, a 2-d embedding, a tiny init.
  c.dynamics = ml_collections.ConfigDict(dict(
      n=100, d=2000, num_easy=0, a_class=1.0, a_sub=0.5, noise=1.0, p=2, init_scale=1e-4,
      lr=0.1, steps=20000, record_every=200, batch_size=20,
      num_seeds=10,          # seeds of claim 1
      rise=0.1, fall=0.1))   # learn: the subclass probe rises >= rise; unlearn: its last
                             # quarter's mean is >= fall below the peak
  return c
