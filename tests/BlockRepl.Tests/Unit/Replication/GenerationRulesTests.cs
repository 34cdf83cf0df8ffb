using BlockRepl.Core.Replication;

namespace BlockRepl.Tests.Unit.Replication;

/// <summary>Every row of the generations table of DESIGN.md, seen from the sending node.</summary>
public sealed class GenerationRulesTests
{
    private static GenerationInfo Node(ulong current, ulong bitmap = 0, ulong[]? history = null, bool fresh = false, bool needsFull = false, bool discard = false) =>
        new(current, bitmap, history ?? [], fresh, needsFull, discard);

    [Fact]
    public void SplitBrainVictimDiscards_SameBitmapBase_BitmapResync() =>
        // Survivor B (current 0xC, bitmap from 0xA) and victim A (current 0xB, bitmap from 0xA): both bitmaps count from 0xA.
        Assert.Equal(SyncDecision.BitmapResync,
            GenerationRules.Decide(Node(0xC, bitmap: 0xA, history: [0xA]), Node(0xB, bitmap: 0xA, history: [0xA], discard: true)).Decision);

    [Fact]
    public void VictimDiscards_SenderNeverMoved_BitmapResync() =>
        Assert.Equal(SyncDecision.BitmapResync,
            GenerationRules.Decide(Node(0xA), Node(0xB, bitmap: 0xA, history: [0xA], discard: true)).Decision);

    [Fact]
    public void VictimDiscards_BasesDiffer_FullResync() =>
        Assert.Equal(SyncDecision.FullResync,
            GenerationRules.Decide(Node(0xD, bitmap: 0xC, history: [0xC, 0xA]), Node(0xB, bitmap: 0xA, history: [0xA], discard: true)).Decision);

    [Fact]
    public void VictimDiscards_ButMayHoldUnnamedWrites_FullResync() =>
        Assert.Equal(SyncDecision.FullResync,
            GenerationRules.Decide(Node(0xC, bitmap: 0xA, history: [0xA]), Node(0xB, bitmap: 0xA, history: [0xA], needsFull: true, discard: true)).Decision);

    [Fact]
    public void VictimDiscards_NoCommonGeneration_StillUnrelated() =>
        Assert.Equal(SyncDecision.Unrelated,
            GenerationRules.Decide(Node(0xC, bitmap: 0xE, history: [0xE]), Node(0xB, bitmap: 0xA, history: [0xA], discard: true)).Decision);

    [Fact]
    public void FreshReceiver_FullSync() =>
        Assert.Equal(SyncDecision.FullResync, GenerationRules.Decide(Node(0xA), Node(0x99, fresh: true)).Decision);

    [Fact]
    public void CurrentsEqual_InSync() =>
        Assert.Equal(SyncDecision.InSync, GenerationRules.Decide(Node(0xA), Node(0xA)).Decision);

    [Fact]
    public void CurrentsEqual_ButSenderCrashedAsPrimary_Full() =>
        Assert.Equal(SyncDecision.FullResync, GenerationRules.Decide(Node(0xA, needsFull: true), Node(0xA)).Decision);

    [Fact]
    public void SendersBitmapGenerationIsReceiversCurrent_BitmapResync() =>
        Assert.Equal(SyncDecision.BitmapResync, GenerationRules.Decide(Node(0xB, bitmap: 0xA, history: [0xA]), Node(0xA)).Decision);

    [Fact]
    public void BitmapMatches_ButReceiverMayHoldUnshippedWrites_Full() =>
        Assert.Equal(SyncDecision.FullResync, GenerationRules.Decide(Node(0xB, bitmap: 0xA, history: [0xA]), Node(0xA, needsFull: true)).Decision);

    [Fact]
    public void ReceiversCurrentInSendersHistory_FullResync() =>
        Assert.Equal(SyncDecision.FullResync, GenerationRules.Decide(Node(0xC, bitmap: 0, history: [0xB, 0xA]), Node(0xA)).Decision);

    [Fact]
    public void SendersCurrentInReceiversHistory_PeerIsNewer() =>
        Assert.Equal(SyncDecision.PeerIsNewer, GenerationRules.Decide(Node(0xA), Node(0xB, bitmap: 0xA, history: [0xA])).Decision);

    [Fact]
    public void BothChangedSinceCommonGeneration_SplitBrain()
    {
        var (decision, reason) = GenerationRules.Decide(Node(0xB, bitmap: 0xA, history: [0xA]), Node(0xC, bitmap: 0xA, history: [0xA]));
        Assert.Equal(SyncDecision.SplitBrain, decision);
        Assert.Contains("0x000000000000000a", reason, StringComparison.Ordinal);
    }

    [Fact]
    public void NoCommonGeneration_Unrelated() =>
        Assert.Equal(SyncDecision.Unrelated, GenerationRules.Decide(Node(0xB, history: [0x7]), Node(0xC, history: [0x8])).Decision);
}
