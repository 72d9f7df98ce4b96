/** A solid-colour size×size 24-bit BMP: binary output without an image library. */
export function solidBmp(size: number, rgb: [number, number, number]): Uint8Array<ArrayBuffer> {
  const row = Math.ceil((size * 3) / 4) * 4;
  const pixels = row * size;
  const out = new Uint8Array(new ArrayBuffer(54 + pixels));
  const dv = new DataView(out.buffer);
  out[0] = 0x42; // "B"
  out[1] = 0x4d; // "M"
  dv.setUint32(2, out.length, true);
  dv.setUint32(10, 54, true); // pixel data offset
  dv.setUint32(14, 40, true); // BITMAPINFOHEADER
  dv.setInt32(18, size, true);
  dv.setInt32(22, size, true);
  dv.setUint16(26, 1, true); // planes
  dv.setUint16(28, 24, true); // bits per pixel
  dv.setUint32(34, pixels, true);
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size; x++) {
      const o = 54 + y * row + x * 3;
      out[o] = rgb[2];
      out[o + 1] = rgb[1];
      out[o + 2] = rgb[0];
    }
  }
  return out;
}

/** "ff8800" → [255, 136, 0]. */
export function parseHex(hex: string): [number, number, number] {
  const n = parseInt(hex, 16);
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
}
