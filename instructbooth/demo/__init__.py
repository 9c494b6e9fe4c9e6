"""The embedded demo: a tiny world of coloured shapes where the whole method runs on a CPU.

world.py     captioned 32x32 images, held-in / held-out captions
prompts.py   prompts with the personalization subject ("sks toy next to ...") and their parser
subject.py   the subject (a pink/cyan striped diamond) and ground-truth images of any prompt
checker.py   exact reading of generated images: attribute accuracy, reward, subject fidelity
model.py     the ~3M-parameter pixel-space model, its word tokenizer, the shipped weights
sampling.py  stochastic DDIM sampling with classifier-free guidance
pretrain.py  the resumable pretraining loop (scripts/pretrain_demo.py rebuilds the weights)
evaluate.py  held-in / held-out accuracy of a model

Importing this package loads nothing heavy; import the modules you need.
"""
