namespace BlockRepl.Core;

/// <summary>A run of the image that is either allocated data or a hole (reads as zeroes).</summary>
public readonly record struct ImageExtent(long Offset, long Length, bool IsHole)
{
    public long End => Offset + Length;
}
