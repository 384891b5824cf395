"""InfoMin's instance-level partner, as `--method CLD` of the CLD authors' main_imagenet_infomin_cld.py
runs it (infomin/contrast_trainer.py, _train_moco_cld; infomin/mem_moco.py, RGBMoCo): MoCo's key
encoder and queue, three crops per image (two queries x1, x2 and one key x3) plus a jigsaw input whose
feature is contrasted against the same key and queue with weight beta.

Per step, with l(q, Q) MoCo's InfoNCE of queries q against this step's keys k and the queue Q:
    loss = [(1 - beta) l(q1, Q) + beta l(j, Q) + (1 - beta) l(q2, Q') + beta l(j, Q')] / 2
and CLD between the group features of x1 and x2 (lib/losses.py). Q' = Q here: both queries meet the
queue as it was before the step, and the step's keys are enqueued once, after the optimizer step.

enqueue_twice reproduces the authors' trainer instead: their contrast() enqueues the keys inside each
call, so the second call already sees this step's keys in its queue (Q' = Q with k written at the
pointer: the second query, and the jigsaw feature the second time, meet their own positive key among
the negatives) and each key is enqueued twice per step, the queue holding Q - 2B distinct older keys.
"""
import torch

from lib import dist
from lib.infomin_aug import JigsawTiles
from lib.losses import infonce_loss
from lib.moco import MomentumEncoder


class InfoMin(MomentumEncoder):
    views = 3                   # x1, x2 (queries, CLD between them) and x3 (the key)
    terms = ("loss_query", "loss_jigsaw")   # logged beside loss_ins: (1 - beta) loss_query + beta loss_jigsaw
    online_views = (0, 1, 3)    # what goes through the online network: the queries and the jigsaw tiles
    extra_input = JigsawTiles   # (dataset info, training size) -> PIL image -> tiles [9, C, t, t]

    def __init__(self, model, queue_size, dim=128, momentum=0.999, temperature=0.15, beta=0.5,
                 enqueue_twice=False):
        super().__init__(model, queue_size, dim, momentum, temperature)
        self.beta, self.enqueue_twice = beta, enqueue_twice

    @classmethod
    def build(cls, model, config, size):
        return cls(model, config["queue"], config["dim"], config["moco_momentum"], config["ins_t"],
                   config["beta"], config["enqueue_twice"])

    def loss(self, queries, views, indices):
        """queries: f_I of x1 and x2 and the jigsaw feature, each [B, dim]; views[2] is the key crop.
        Returns (loss, keys, [query term, jigsaw term]): the mean over the two queries of l(q) and of l(j),
        so that loss = (1 - beta) * query term + beta * jigsaw term."""
        q1, q2, jigsaw = queries
        keys = self.keys(views[2])                                                       # [B, dim], no gradient
        second = self.pushed(keys) if self.enqueue_twice else self.queue
        loss, query_terms, jigsaw_terms = 0, [], []
        for q, queue in ((q1, self.queue), (q2, second)):
            query_terms.append(infonce_loss(q, keys, queue, self.temperature))
            jigsaw_terms.append(infonce_loss(jigsaw, keys, queue, self.temperature))
            loss = loss + ((1 - self.beta) * query_terms[-1] + self.beta * jigsaw_terms[-1])
        terms = torch.stack([sum(query_terms) / 2, sum(jigsaw_terms) / 2])
        return loss / 2, keys, terms

    def pushed(self, keys):
        """The queue as it would be after enqueue(keys), without changing it: [Q, dim]."""
        keys = dist.all_gather(keys.float())                                             # [world * B, dim]
        slots = (self.ptr + torch.arange(len(keys), device=keys.device)) % len(self.queue)
        queue = self.queue.clone()
        queue[slots] = keys
        return queue

    @torch.no_grad()
    def update(self, model, keys, applied=None):
        """After the optimizer step: the key encoder's EMA, then the keys into the queue, once (twice with
        enqueue_twice, the authors' two contrast() calls); nothing where applied is a False tensor."""
        super().update(model, keys, applied)
        if self.enqueue_twice:
            self.enqueue(keys, applied)

