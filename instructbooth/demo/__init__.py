"""The embedded demo: a tiny world of coloured shapes where the whole method runs on a CPU.

world.py     captioned 32x32 images, held-in / held-out captions
prompts.py   prompts with the personalization subject ("sks toy next to ...") and their parser
subject.py   the subject (a pink/cyan striped diamond) and ground-truth images of any prompt
checker.py   exact reading of generated images: attribute accuracy, reward, subject fidelity
model.py     the ~3M-parameter pixel-space model, its word tokenizer, the shipped weights
pretrain.py  the resumable pretraining loop (scripts/pretrain_demo.py rebuilds the weights)
settings.py  a demo run's settings (DemoConfig) and variants
instructions.py  instruction prompts with and without the subject, the RL reward, per-image scores
evaluate.py  sampling (the library's sampler) and scoring models: the demo's evaluation, held-in /
             held-out accuracy of a pretrained model
pipeline.py  the whole demo as one function (run_demo)

Importing this package loads nothing heavy; import the modules you need.
"""
