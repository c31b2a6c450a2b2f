"""How far a long stage is: one line on a terminal, nothing in a log.

Sampling 1,024 Tweedie steps, scoring every validation window or downloading text8 takes minutes
with no other output. Progress draws "label: done/total, elapsed m:ss, about m:ss left" on
stderr and redraws it in place (a carriage return) at most twice a second; the remaining time
assumes the steps left take as long as the steps done. It draws nothing when stderr is not a
terminal (a log file, a pipe, a test) or while the stage is younger than a second, and clears
its line at the last step, so the output that follows reads as if it had never been there.

sampling.py, evaluation.py, compare.py and prepare.py show their long stages with it.
"""
import sys
import time


def clock(seconds):
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


class Progress:
    """A progress line for `total` steps. Call it with the steps done so far (its signature fits
    the samplers' callback(step, x)); at done == total it clears the line. live=False keeps it
    silent, for a caller that prints something else while the stage runs."""

    def __init__(self, total, label, live=True):
        self.total, self.label = total, label
        self.live = live and sys.stderr.isatty()
        self.start = self.drawn = time.perf_counter()
        self.shown = False

    def __call__(self, done, *_):
        now = time.perf_counter()
        if done >= self.total:
            if self.shown:
                sys.stderr.write("\r\033[K")  # back to the line's start and clear it
                sys.stderr.flush()
                self.shown = False
            return
        if not self.live or not done or now - self.drawn < 0.5 or now - self.start < 1:
            return
        elapsed = now - self.start
        left = elapsed / done * (self.total - done)
        sys.stderr.write(f"\r{self.label}: {done:,.0f}/{self.total:,.0f}, elapsed {clock(elapsed)}, "
                         f"about {clock(left)} left\033[K")  # \033[K: clear the rest of the line
        sys.stderr.flush()
        self.drawn, self.shown = now, True


def progress(items, label):
    """Yield the items of a list one by one with a progress line counting them."""
    bar = Progress(len(items), label)
    for done, item in enumerate(items, 1):
        yield item
        bar(done)
