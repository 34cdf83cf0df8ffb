using System.Buffers.Binary;
using System.Numerics;
using System.Runtime.InteropServices;
using System.Text.Json;
using Microsoft.Win32.SafeHandles;
using BlockRepl.Core.Native;

namespace BlockRepl.Core;

/// <summary>
/// <c>NAME.meta</c>: the volume's record (identity, roles, generations: <see cref="VolumeMetadata"/> as JSON), the
/// activity log and the persistent dirty bitmap, in one file with fixed regions.
/// </summary>
/// <remarks>
/// Layout (little-endian; every region 4 KiB aligned):
/// <code>
///   0       record slot 0   64 KiB  magic "BRMETA\0\2", seq, length, crc32c, then the JSON
///   64 KiB  record slot 1   64 KiB
///   128 KiB AL slot 0       32 KiB  magic "BRAL\0\0\0\1", seq, extent shift, count, crc32c, then count u32 extents
///   160 KiB AL slot 1       32 KiB
///   192 KiB dirty bitmap            one bit per 4 KiB of volume, 64-bit words, rewritten a 4 KiB page at a time
/// </code>
/// Crash safety: the record and the activity log are double-buffered. Each update goes to the slot not holding
/// the newest valid copy, with a higher sequence number and a CRC32C, then fdatasync; a torn write leaves the
/// other slot intact, and load takes the valid slot with the higher sequence number. Bitmap pages are written in
/// place without a checksum: a page is only ever written to set bits of an extent that the activity log still
/// names (the log is rewritten only after the page is durable), or to clear bits of ranges the peer holds
/// durably; a torn page therefore mixes two states that are both safe. A version 1 file (plain JSON) is upgraded
/// in place on open.
/// </remarks>
public sealed class MetaFile : IDisposable
{
    /// <summary>Activity-log extent: 4 MiB, as DRBD. One extent's bits (1024) sit in one bitmap page.</summary>
    public const int ExtentShift = 22;

    public const long ExtentBytes = 1L << ExtentShift;

    private const int RecordSlotBytes = 64 * 1024;
    private const long AlOffset = 2 * RecordSlotBytes;
    private const int AlSlotBytes = 32 * 1024;
    private const int SlotHeaderBytes = 32;

    /// <summary>Most extents one activity-log slot holds (32 KiB slot, 4 bytes each).</summary>
    public const int MaxAlExtents = (AlSlotBytes - SlotHeaderBytes) / 4;

    /// <summary>Where the bitmap starts. Public for tests that corrupt or inspect the file.</summary>
    public const long BitmapOffset = AlOffset + 2 * AlSlotBytes;

    public const int BitmapPageBytes = 4096;

    private const ulong RecordMagic = 0x0200_4154_454D_5242; // "BRMETA\0\2"
    private const ulong AlMagic = 0x0100_0000_4C41_5242;     // "BRAL\0\0\0\1"

    private readonly SafeFileHandle _handle;
    private readonly int _fd;
    private readonly Lock _gate = new();
    private ulong _recordSeq;
    private int _recordSlot;
    private ulong _alSeq;
    private int _alSlot;

    private MetaFile(string path, SafeFileHandle handle)
    {
        Path = path;
        _handle = handle;
        _fd = (int)handle.DangerousGetHandle();
    }

    public string Path { get; }

    /// <summary>Creates a new file holding <paramref name="metadata"/>, an empty log and a clean bitmap.</summary>
    public static MetaFile Create(string path, VolumeMetadata metadata)
    {
        ArgumentNullException.ThrowIfNull(metadata);
        var handle = File.OpenHandle(path, FileMode.CreateNew, FileAccess.ReadWrite, FileShare.Read);
        var file = new MetaFile(path, handle);
        try
        {
            RandomAccess.SetLength(handle, BitmapOffset + BitmapBytesFor(metadata.SizeBytes));
            file.Preallocate(BitmapOffset + BitmapBytesFor(metadata.SizeBytes));
            file._recordSlot = 1; // the first save goes to slot 0, and so does the first log write
            file._alSlot = 1;
            file.Save(metadata);
            SyncDirectory(path);
            return file;
        }
        catch
        {
            file.Dispose();
            File.Delete(path);
            throw;
        }
    }

    /// <summary>Opens an existing file (upgrading a version 1 JSON file); null when there is none.</summary>
    public static (MetaFile File, VolumeMetadata Metadata)? TryOpen(string path)
    {
        if (!File.Exists(path))
        {
            return null;
        }

        var first = new byte[1];
        using (var probe = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite))
        {
            if (RandomAccess.Read(probe, first, 0) == 1 && first[0] == (byte)'{')
            {
                Upgrade(path);
            }
        }

        var handle = File.OpenHandle(path, FileMode.Open, FileAccess.ReadWrite, FileShare.Read);
        var file = new MetaFile(path, handle);
        try
        {
            var metadata = file.LoadRecord();
            var needed = BitmapOffset + BitmapBytesFor(metadata.SizeBytes);
            if (RandomAccess.GetLength(handle) < needed)
            {
                RandomAccess.SetLength(handle, needed);
            }

            file.Preallocate(needed);

            file.LoadAlSlot();
            return (file, metadata);
        }
        catch
        {
            file.Dispose();
            throw;
        }
    }

    /// <summary>Bytes the bitmap of a volume of <paramref name="sizeBytes"/> takes (whole pages).</summary>
    public static long BitmapBytesFor(long sizeBytes)
    {
        var chunks = (sizeBytes + 4095) >> 12;
        var words = (chunks + 63) >> 6;
        return (words * 8 + BitmapPageBytes - 1) / BitmapPageBytes * BitmapPageBytes;
    }

    /// <summary>Writes the record to the other slot and makes it durable.</summary>
    public void Save(VolumeMetadata metadata)
    {
        ArgumentNullException.ThrowIfNull(metadata);
        var json = JsonSerializer.SerializeToUtf8Bytes(metadata, MetadataJsonContext.Default.VolumeMetadata);
        if (json.Length > RecordSlotBytes - SlotHeaderBytes)
        {
            throw new InvalidOperationException($"metadata record of {json.Length} bytes does not fit its slot");
        }

        lock (_gate)
        {
            var seq = _recordSeq + 1;
            var slot = 1 - _recordSlot;
            var bytes = new byte[(SlotHeaderBytes + json.Length + 4095) / 4096 * 4096];
            BinaryPrimitives.WriteUInt64LittleEndian(bytes, RecordMagic);
            BinaryPrimitives.WriteUInt64LittleEndian(bytes.AsSpan(8), seq);
            BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(16), (uint)json.Length);
            json.CopyTo(bytes.AsSpan(SlotHeaderBytes));
            BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(20), SlotCrc(bytes, SlotHeaderBytes + json.Length));
            Write(bytes, (long)slot * RecordSlotBytes);
            SyncLocked();
            _recordSeq = seq;
            _recordSlot = slot;
        }
    }

    /// <summary>The extents the activity log names (empty when it never held any).</summary>
    public uint[] ReadActivityLog()
    {
        lock (_gate)
        {
            return ReadAlSlot(_alSlot, out _, out _) ?? [];
        }
    }

    /// <summary>Writes the activity log to the other slot. Not durable until <see cref="Sync"/>.</summary>
    public void WriteActivityLog(ReadOnlySpan<uint> extents)
    {
        if (extents.Length > MaxAlExtents)
        {
            throw new ArgumentOutOfRangeException(nameof(extents), $"{extents.Length} extents; a slot holds {MaxAlExtents}");
        }

        var bytes = new byte[(SlotHeaderBytes + extents.Length * 4 + 4095) / 4096 * 4096];
        lock (_gate)
        {
            var seq = _alSeq + 1;
            var slot = 1 - _alSlot;
            BinaryPrimitives.WriteUInt64LittleEndian(bytes, AlMagic);
            BinaryPrimitives.WriteUInt64LittleEndian(bytes.AsSpan(8), seq);
            BinaryPrimitives.WriteUInt16LittleEndian(bytes.AsSpan(16), ExtentShift);
            BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(24), (uint)extents.Length);
            for (var i = 0; i < extents.Length; i++)
            {
                BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(SlotHeaderBytes + i * 4), extents[i]);
            }

            BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(20), SlotCrc(bytes, SlotHeaderBytes + extents.Length * 4));
            Write(bytes, AlOffset + (long)slot * AlSlotBytes);
            _alSeq = seq;
            _alSlot = slot;
        }
    }

    /// <summary>Reads the persisted bitmap into <paramref name="words"/>.</summary>
    public void ReadBitmap(Span<ulong> words)
    {
        var bytes = MemoryMarshal.AsBytes(words);
        var done = 0;
        while (done < bytes.Length)
        {
            var n = RandomAccess.Read(_handle, bytes[done..], BitmapOffset + done);
            if (n <= 0)
            {
                bytes[done..].Clear();
                break;
            }

            done += n;
        }

        if (!BitConverter.IsLittleEndian)
        {
            for (var i = 0; i < words.Length; i++)
            {
                words[i] = BinaryPrimitives.ReverseEndianness(words[i]);
            }
        }
    }

    /// <summary>Writes bitmap words starting at word <paramref name="firstWord"/>. Not durable until <see cref="Sync"/>.</summary>
    public void WriteBitmap(ReadOnlySpan<ulong> words, long firstWord)
    {
        if (!BitConverter.IsLittleEndian)
        {
            throw new PlatformNotSupportedException("the bitmap is stored little-endian");
        }

        Write(MemoryMarshal.AsBytes(words), BitmapOffset + firstWord * 8);
    }

    /// <summary>fdatasync: every write to the file so far is durable.</summary>
    public void Sync()
    {
        lock (_gate)
        {
            SyncLocked();
        }
    }

    public void Dispose() => _handle.Dispose();

    private void SyncLocked()
    {
        while (LibC.fdatasync(_fd) != 0)
        {
            var errno = Marshal.GetLastPInvokeError();
            if (errno != LibC.EINTR)
            {
                throw new IOException($"fdatasync {Path}: errno {errno}", errno == LibC.ENOSPC ? unchecked((int)0x80070070) : errno);
            }
        }
    }

    /// <summary>
    /// Allocates every block of the file now, so that a later log or bitmap update never needs space a full
    /// filesystem no longer has (a write that could not log its extent would have to fail).
    /// </summary>
    private void Preallocate(long length)
    {
        if (LibC.fallocate(_fd, 0, 0, length) != 0)
        {
            var errno = Marshal.GetLastPInvokeError();
            if (errno == LibC.ENOSPC)
            {
                throw new IOException($"{Path}: no space to allocate {length} bytes of metadata", unchecked((int)0x80070070));
            }

            // EOPNOTSUPP (e.g. some network filesystems): the regions are written on demand.
        }
    }

    private void Write(ReadOnlySpan<byte> bytes, long offset) => RandomAccess.Write(_handle, bytes, offset);

    private VolumeMetadata LoadRecord()
    {
        VolumeMetadata? best = null;
        string? why = null;
        for (var slot = 0; slot < 2; slot++)
        {
            var header = new byte[SlotHeaderBytes];
            if (RandomAccess.Read(_handle, header, (long)slot * RecordSlotBytes) != SlotHeaderBytes
                || BinaryPrimitives.ReadUInt64LittleEndian(header) != RecordMagic)
            {
                continue;
            }

            var seq = BinaryPrimitives.ReadUInt64LittleEndian(header.AsSpan(8));
            var length = BinaryPrimitives.ReadUInt32LittleEndian(header.AsSpan(16));
            if (length > RecordSlotBytes - SlotHeaderBytes)
            {
                why = $"slot {slot} claims {length} bytes";
                continue;
            }

            var bytes = new byte[SlotHeaderBytes + length];
            if (RandomAccess.Read(_handle, bytes, (long)slot * RecordSlotBytes) != bytes.Length
                || SlotCrc(bytes, bytes.Length) != BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(20)))
            {
                why = $"slot {slot} fails its checksum";
                continue;
            }

            if (best is not null && seq <= _recordSeq)
            {
                continue;
            }

            try
            {
                best = Parse(bytes.AsSpan(SlotHeaderBytes), Path);
                _recordSeq = seq;
                _recordSlot = slot;
            }
            catch (InvalidDataException ex)
            {
                why = ex.Message;
            }
        }

        return best ?? throw new InvalidDataException($"metadata {Path} is not valid: no readable record slot{(why is null ? "" : $" ({why})")}");
    }

    private void LoadAlSlot()
    {
        _alSlot = 1;
        _alSeq = 0;
        for (var slot = 0; slot < 2; slot++)
        {
            if (ReadAlSlot(slot, out var seq, out _) is not null && seq > _alSeq)
            {
                _alSeq = seq;
                _alSlot = slot;
            }
        }
    }

    private uint[]? ReadAlSlot(int slot, out ulong seq, out int count)
    {
        seq = 0;
        count = 0;
        var bytes = new byte[AlSlotBytes];
        if (RandomAccess.Read(_handle, bytes, AlOffset + (long)slot * AlSlotBytes) != AlSlotBytes
            || BinaryPrimitives.ReadUInt64LittleEndian(bytes) != AlMagic
            || BinaryPrimitives.ReadUInt16LittleEndian(bytes.AsSpan(16)) != ExtentShift)
        {
            return null;
        }

        var n = BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(24));
        if (n > MaxAlExtents || SlotCrc(bytes, SlotHeaderBytes + (int)n * 4) != BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(20)))
        {
            return null;
        }

        seq = BinaryPrimitives.ReadUInt64LittleEndian(bytes.AsSpan(8));
        count = (int)n;
        var extents = new uint[n];
        for (var i = 0; i < n; i++)
        {
            extents[i] = BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(SlotHeaderBytes + i * 4));
        }

        return extents;
    }

    /// <summary>CRC32C over a slot's header (with the CRC field as zero) and payload.</summary>
    private static uint SlotCrc(ReadOnlySpan<byte> slot, int length)
    {
        var crc = 0xFFFF_FFFFu;
        crc = Crc(crc, slot[..20]);
        crc = Crc(crc, [0, 0, 0, 0]);
        crc = Crc(crc, slot[24..length]);
        return ~crc;
    }

    private static uint Crc(uint crc, ReadOnlySpan<byte> data)
    {
        var i = 0;
        for (; i + 8 <= data.Length; i += 8)
        {
            crc = (uint)BitOperations.Crc32C(crc, BinaryPrimitives.ReadUInt64LittleEndian(data[i..]));
        }

        for (; i < data.Length; i++)
        {
            crc = BitOperations.Crc32C(crc, data[i]);
        }

        return crc;
    }

    private static VolumeMetadata Parse(ReadOnlySpan<byte> json, string path)
    {
        VolumeMetadata? meta;
        try
        {
            meta = JsonSerializer.Deserialize(json, MetadataJsonContext.Default.VolumeMetadata);
        }
        catch (JsonException ex)
        {
            throw new InvalidDataException($"metadata {path} is not valid: {ex.Message}", ex);
        }

        if (meta is null)
        {
            throw new InvalidDataException($"metadata {path} is empty");
        }

        if (meta.FormatVersion is not (1 or VolumeMetadata.CurrentFormatVersion))
        {
            throw new InvalidDataException($"metadata {path} has format version {meta.FormatVersion}; this build reads {VolumeMetadata.CurrentFormatVersion}");
        }

        // Validate the state words now, so a hand-edited file fails at start with a clear reason.
        _ = StateNames.ParseRole(meta.Role);
        _ = StateNames.ParseDisk(meta.Disk);
        return meta;
    }

    /// <summary>Version 1 was the JSON record alone: rewrite it as a version 2 file (via a temporary file and rename).</summary>
    private static void Upgrade(string path)
    {
        var meta = Parse(File.ReadAllBytes(path), path);
        meta.FormatVersion = VolumeMetadata.CurrentFormatVersion;
        var tmp = path + ".tmp";
        File.Delete(tmp);
        using (Create(tmp, meta))
        {
        }

        File.Move(tmp, path, overwrite: true);
        SyncDirectory(path);
    }

    private static void SyncDirectory(string path)
    {
        // fsync on the directory makes the create or rename durable. Some filesystems refuse fsync on a
        // directory; it is then as durable as they make it.
        var fd = LibC.open(System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(path))!, LibC.O_RDONLY | LibC.O_DIRECTORY);
        if (fd >= 0)
        {
            _ = LibC.fsync(fd);
            _ = LibC.close(fd);
        }
    }
}
