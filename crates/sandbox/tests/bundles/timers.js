// Timers that outlive their response (crates/sandbox/tests/freeze.rs): `start` leaves an interval
// running that bumps a counter and writes it to out/ticks in the data dir (the bundle's write
// permission), so the test can watch it without calling (a call would thaw the instance).
let ticks = 0;
let timer;

function tick() {
  ticks++;
  Deno.writeTextFileSync("out/ticks", String(ticks));
}

export const start = {
  handler: () => {
    if (!timer) {
      Deno.writeTextFileSync("out/ticks", "0");
      timer = setInterval(tick, 5);
    }
    return { started: true };
  },
};

export const count = { handler: () => ({ ticks }) };

// Answers once the timer has ticked `n` more times: the timer runs again while a call is in flight.
export const waitTicks = {
  handler: async ({ n }) => {
    const from = ticks;
    while (ticks < from + Number(n ?? 3)) await new Promise((r) => setTimeout(r, 1));
    return { from, ticks };
  },
};
