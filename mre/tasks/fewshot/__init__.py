"""Few-shot prompt classification with manual and knowledgeable (WLI) verbalizers (the paper's
Section 4): `python train.py experiment=kv_fewshot [verbalizer=manual|knowledgeable]`.

`task.build` makes the run's parts, `data` the sample, template and loaders, `verbalizer` the label
words and their scoring head, `module` the LightningModule."""
