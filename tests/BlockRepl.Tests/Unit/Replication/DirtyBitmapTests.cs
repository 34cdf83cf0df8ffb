using BlockRepl.Core.Replication;

namespace BlockRepl.Tests.Unit.Replication;

public sealed class DirtyBitmapTests
{
    [Fact]
    public void Mark_UnalignedRange_DirtiesEveryTouchedChunk()
    {
        var bitmap = new DirtyBitmap(1 << 20);
        bitmap.Mark(4095, 2); // touches chunks 0 and 1
        Assert.Equal(2, bitmap.DirtyChunks);
        Assert.Equal(8192, bitmap.DirtyBytes);
        bitmap.Mark(0, 4096); // already dirty
        Assert.Equal(2, bitmap.DirtyChunks);
    }

    [Fact]
    public void TakeRun_ClearsAndReturnsContiguousRunsInOrder_ThenWraps()
    {
        var bitmap = new DirtyBitmap(1 << 20);
        bitmap.Mark(8192, 3 * 4096);
        bitmap.Mark(100 * 4096, 4096);
        Assert.True(bitmap.TakeRun(50 * 4096, 1 << 20, out var offset, out var length));
        Assert.Equal((100 * 4096L, 4096), (offset, length));
        Assert.True(bitmap.TakeRun(offset + length, 1 << 20, out offset, out length)); // wraps to the start
        Assert.Equal((8192L, 3 * 4096), (offset, length));
        Assert.True(bitmap.IsEmpty);
        Assert.False(bitmap.TakeRun(0, 1 << 20, out _, out _));
    }

    [Fact]
    public void TakeRun_LimitsTheRunLength()
    {
        var bitmap = new DirtyBitmap(1 << 20);
        bitmap.Mark(0, 1 << 20);
        Assert.True(bitmap.TakeRun(0, 64 * 1024, out var offset, out var length));
        Assert.Equal((0L, 65536), (offset, length));
        Assert.Equal((1 << 20) - 65536, bitmap.DirtyBytes);
    }

    [Fact]
    public void OddSizedVolume_LastChunkCountsOnlyToTheEnd()
    {
        var bitmap = new DirtyBitmap(10_000);
        bitmap.MarkAll();
        Assert.Equal(3, bitmap.DirtyChunks);
        Assert.Equal(10_000, bitmap.DirtyBytes);
        Assert.True(bitmap.TakeRun(0, 1 << 20, out var offset, out var length));
        Assert.Equal((0L, 10_000), (offset, length));
        bitmap.Mark(9_999, 100); // clamped at the end
        Assert.Equal(1, bitmap.DirtyChunks);
    }

    [Fact]
    public void EncodeRuns_ThenMarkRuns_ReproducesTheBitmapExactly()
    {
        var rng = new Random(7);
        var source = new DirtyBitmap(64L << 20);
        for (var i = 0; i < 300; i++)
        {
            source.Mark(rng.NextInt64(64L << 20), rng.Next(1, 200_000));
        }

        source.Mark((64L << 20) - 10, 10); // the last chunk
        var runs = source.EncodeRuns(1 << 20);
        var copy = new DirtyBitmap(64L << 20);
        copy.MarkRuns(runs);
        Assert.Equal(source.Words, copy.Words);
        Assert.Equal(source.DirtyChunks, copy.DirtyChunks);
    }

    [Fact]
    public void EncodeRuns_OverTheLimit_WidensToASuperset()
    {
        var source = new DirtyBitmap(64L << 20);
        for (long chunk = 0; chunk < 16384; chunk += 2)
        {
            source.Mark(chunk * 4096, 1); // 8192 single-chunk runs
        }

        var runs = source.EncodeRuns(100);
        Assert.True(runs.Count / 2 <= 100, $"{runs.Count / 2} runs");
        var copy = new DirtyBitmap(64L << 20);
        copy.MarkRuns(runs);
        for (var w = 0; w < source.Words.Length; w++)
        {
            Assert.Equal(source.Words[w], source.Words[w] & copy.Words[w]); // every source bit is in the copy
        }
    }

    [Fact]
    public void MarkRuns_OutOfRange_IsClippedNotThrown()
    {
        var bitmap = new DirtyBitmap(1 << 20);
        bitmap.MarkRuns([250, 1000, 5000, 3, 0, 0]);
        Assert.Equal(6, bitmap.DirtyChunks); // chunks 250..255
    }

    [Fact]
    public void Or_CountsTheUnion()
    {
        var a = new DirtyBitmap(1 << 20);
        a.Mark(0, 8192);
        var b = new DirtyBitmap(1 << 20);
        b.Mark(4096, 8192);
        a.Or(b.Words);
        Assert.Equal(3, a.DirtyChunks);
    }
}
