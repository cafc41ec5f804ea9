/*
 * A stand-in for Windows' bcryptprimitives.dll, for runs under wine only.
 *
 * Why: Rust's standard library since 1.78 fills its random seeds (HashMap's
 * keys among them) with ProcessPrng from bcryptprimitives.dll, which every
 * Windows 10 and later has. Wine 8.0, Debian 12's, has no such DLL, so a
 * current-Rust executable does not even start under it. This stub exports
 * ProcessPrng over RtlGenRandom (advapi32's SystemFunction036), which wine
 * has. scripts/windows-cmd.sh builds it with mingw-w64 and puts it beside
 * the executables in the folder it runs under wine; it is never shipped
 * with them: on Windows the system's own DLL is the one to use.
 *
 * Build: x86_64-w64-mingw32-gcc -shared -O2 -o bcryptprimitives.dll \
 *            bcryptprimitives.c -ladvapi32
 */
#include <windows.h>

/* RtlGenRandom, declared here: ntsecapi.h names it through a macro. */
BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

/* Documented to fill the buffer and always return TRUE; RtlGenRandom takes
 * a ULONG length, so a larger request is filled in pieces. */
__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length)
{
    while (length > 0) {
        ULONG piece = length > 0x40000000 ? 0x40000000 : (ULONG)length;
        if (!SystemFunction036(data, piece))
            return FALSE;
        data += piece;
        length -= piece;
    }
    return TRUE;
}
