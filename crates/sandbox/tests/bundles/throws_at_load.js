throw new Error("top-level failure with private detail");
