export const ok = { handler: () => 1 };
const leaked = "SECRET-LINE-CONTENT" +;
