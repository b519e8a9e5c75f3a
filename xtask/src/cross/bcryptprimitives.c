/*
 * bcryptprimitives.dll for Wine 8, which lacks it: the one function Rust's standard library
 * imports from it on Windows (its random source, for hash map seeds and the like), over
 * RtlGenRandom, which Wine has. Built by `cargo xtask cross` with mingw-w64 and placed beside the
 * Windows agent that runs under Wine; never shipped. Windows 10 and later have the real one.
 */
#include <windows.h>
#define SystemFunction036 NTAPI SystemFunction036
#include <ntsecapi.h>
#undef SystemFunction036

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len) {
    while (len > 0) {
        ULONG n = len > 0x10000000 ? 0x10000000 : (ULONG)len;
        if (!RtlGenRandom(data, n)) {
            return FALSE;
        }
        data += n;
        len -= n;
    }
    return TRUE;
}
