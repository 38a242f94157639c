// SPDX-License-Identifier: LicenseRef-Proprietary
pragma solidity ^0.8.24;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";

/// @title The ledger benchmark's naive peer (bench/ledger): every receipt posted on chain, one transaction each.
/// @notice Stores each receipt's hash under (device, seq) and emits an event, with the same poster check and replay
/// refusal as SettlementAnchor, so the two differ only in what they put on chain. Not used by the relay.
contract NaiveReceiptLog is AccessControl {
    bytes32 public constant SETTLER_ROLE = keccak256("SETTLER_ROLE");

    mapping(bytes32 device => mapping(uint64 seq => bytes32)) private _receipts;

    event Posted(bytes32 indexed device, uint64 indexed seq, bytes32 receiptHash);

    error AlreadyPosted(bytes32 device, uint64 seq);
    error ZeroIdentifier();

    constructor() {
        _grantRole(DEFAULT_ADMIN_ROLE, msg.sender);
    }

    function post(bytes32 device, uint64 seq, bytes32 receiptHash) external onlyRole(SETTLER_ROLE) {
        if (receiptHash == bytes32(0)) revert ZeroIdentifier();
        if (_receipts[device][seq] != bytes32(0)) revert AlreadyPosted(device, seq);
        _receipts[device][seq] = receiptHash;
        emit Posted(device, seq, receiptHash);
    }

    function receipt(bytes32 device, uint64 seq) external view returns (bytes32) {
        return _receipts[device][seq];
    }
}
