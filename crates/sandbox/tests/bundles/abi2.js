export const atrundAbi = 2; export const ok = { handler: () => 1 };
